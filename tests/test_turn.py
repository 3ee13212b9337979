"""The shared turn and commands: authorize, rate-limit, store, reply, summarize."""

from __future__ import annotations

from agents.offline import OfflineAgent
from bots.access import AccessPolicy, Actor
from bots.commands import Commands, parse_command
from bots.config import AccessSettings, AgentSettings, RateLimitSettings
from bots.ratelimit import RateLimiter
from bots.turn import Incoming, Outcome, Turn
from memory.manager import SessionManager
from memory.types import ChatKey, Role

KEY = ChatKey("telegram", "-100200", "5")
ANN = Actor("telegram", "11", "Ann")
BOB = Actor("telegram", "22", "Bob")


def make_turn(manager: SessionManager, *, allowed: list[str], per_minute: float = 600) -> Turn:
    return Turn(
        manager,
        OfflineAgent(),
        AccessPolicy(AccessSettings(allowed_users=allowed, admins=["telegram:11"])),
        RateLimiter(RateLimitSettings(per_minute=per_minute, burst=3)),
        AgentSettings(),
    )


async def test_a_stranger_is_told_their_id_and_nothing_is_stored(manager: SessionManager) -> None:
    turn = make_turn(manager, allowed=["telegram:11"])
    result = await turn.handle(Incoming(KEY, BOB, "let me in", "9"))
    assert result.outcome is Outcome.DENIED
    assert "Your telegram user id is 22" in result.text
    assert '"telegram:22" to access.allowed_users' in result.text
    assert await manager.find_by_chat(KEY) is None


async def test_nobody_is_allowed_by_default() -> None:
    policy = AccessPolicy(AccessSettings())
    assert not policy.allows(ANN)
    assert policy.allows(Actor("console", "me"))
    assert AccessPolicy(AccessSettings(allow_everyone=True)).allows(ANN)
    assert AccessPolicy(AccessSettings(allowed_users=["11"])).allows(ANN)
    assert not AccessPolicy(AccessSettings(allowed_users=["discord:11"])).allows(ANN)


async def test_the_rate_limit_answers_politely_and_refills() -> None:
    limiter = RateLimiter(RateLimitSettings(per_minute=60, burst=2))
    assert limiter.acquire("u", now=0.0) == 0.0
    assert limiter.acquire("u", now=0.0) == 0.0
    wait = limiter.acquire("u", now=0.0)
    assert 0.9 < wait <= 1.0
    assert limiter.acquire("other", now=0.0) == 0.0
    assert limiter.acquire("u", now=1.01) == 0.0


async def test_rate_limited_turn_stores_nothing(manager: SessionManager) -> None:
    turn = make_turn(manager, allowed=["11"], per_minute=1)
    outcomes = [(await turn.handle(Incoming(KEY, ANN, f"m{i}", f"p{i}"))).outcome for i in range(5)]
    assert outcomes == [Outcome.REPLIED] * 3 + [Outcome.RATE_LIMITED] * 2
    session = await manager.find_by_chat(KEY)
    assert session is not None
    assert [m.text for m in await manager.messages(session.id) if m.role is Role.USER] == [
        "m0",
        "m1",
        "m2",
    ]


async def test_group_context_carries_authors(manager: SessionManager) -> None:
    turn = make_turn(manager, allowed=["11", "22"])
    await turn.observe(Incoming(KEY, BOB, "I prefer the blue one", "1", is_group=True))
    result = await turn.handle(Incoming(KEY, ANN, "what does Bob prefer?", "2", is_group=True))
    assert result.outcome is Outcome.REPLIED
    assert result.session_id is not None
    context = await manager.build_context(result.session_id, label_authors=True)
    assert context.messages[0].text == "[Bob] I prefer the blue one\n\n[Ann] what does Bob prefer?"


async def test_bad_input_through_the_turn_is_rejected_plainly(manager: SessionManager) -> None:
    turn = make_turn(manager, allowed=["11"])
    result = await turn.handle(Incoming(KEY, ANN, "\x00\x00"))
    assert result.outcome is Outcome.REJECTED
    assert result.text == (
        "I couldn't take that message: message contains NUL bytes, which cannot be stored as text."
    )


def test_parse_command() -> None:
    assert parse_command("/reset") == ("reset", "")
    assert parse_command("/Status@palaver_bot now") == ("status", "now")
    assert parse_command("/export\njson") == ("export", "json")
    assert parse_command("hello /reset") is None
    assert parse_command("/") is None
    assert parse_command("/../etc") is None


async def test_commands_help_reset_status_summary(manager: SessionManager) -> None:
    turn = make_turn(manager, allowed=["11"])
    commands = Commands(turn)
    assert (await commands.run("status", "", KEY, ANN)).text.startswith("No conversation yet")
    await turn.handle(Incoming(KEY, ANN, "hello", "1"))
    status = (await commands.run("status", "", KEY, ANN)).text
    assert "Messages: 2; summaries: none yet" in status
    assert "model claude-sonnet-4-6" in status
    before = await manager.find_by_chat(KEY)
    reset = await commands.run("new", "", KEY, ANN)
    assert reset.text.startswith("Started a fresh conversation")
    after = await manager.find_by_chat(KEY)
    assert before is not None and after is not None and after.id != before.id
    assert len(await manager.messages(before.id)) == 2  # the old one is kept
    help_text = (await commands.run("help", "", KEY, ANN)).text
    assert "/reset - Start a fresh conversation" in help_text
    unknown = await commands.run("frobnicate", "", KEY, ANN)
    assert unknown.text == "Unknown command /frobnicate. Send /help to see what I can do."
    denied = await commands.run("status", "", KEY, BOB)
    assert denied.private and "Your telegram user id is 22" in denied.text
