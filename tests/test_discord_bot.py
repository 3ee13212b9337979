"""The Discord interface end to end: the real discord.py client against FakeDiscord.

Each test starts a DiscordBot on the shared turn and commands (SQLite, and PostgreSQL too
when TEST_DATABASE_URL is set), acts as Discord users would - DMs, guild messages,
threads, slash commands, a dropped gateway - and checks both what reached Discord and
what reached the session memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import bots.discord_bot as discord_bot
import conversation.delivery as delivery
from agents.base import AgentEvent, AgentReply, AgentRequest, TextDelta
from agents.settings import ClaudeSettings
from bots.app import Palaver
from bots.chunking import closes_fence, fence_opener
from bots.config import (
    Config,
    DiscordSettings,
    PalaverSettings,
    Secrets,
    TelegramSettings,
)
from bots.discord_bot import DiscordBot
from conversation.dispatcher import Dispatcher
from conversation.settings import AccessSettings
from memory.errors import PalaverError
from memory.manager import SessionManager
from memory.settings import DatabaseSettings
from memory.types import ChatKey, Delivery, Role, StoredMessage
from run import serve
from tests.conftest import ManagerFactory
from tests.core import make_dispatcher
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.discord_api import FakeDiscord, FakeMessage
from tests.fakes.telegram_api import FakeTelegram
from tests.media import pdf, png

TOKEN = "fake-discord-token"
GUILD = 4_100_000_000_000_000_001
CHANNEL = 4_100_000_000_000_000_002
OTHER_CHANNEL = 4_100_000_000_000_000_003
FRIENDS = 4_100_000_000_000_000_004  # a role
ALICE = 7_100_000_000_000_000_001  # allowed, admin
BOB = 7_100_000_000_000_000_002  # allowed
EVE = 7_100_000_000_000_000_003  # not allowed (unless through a role)


@dataclass
class ScriptedAgent:
    """Streams ``echo: <last user message>`` (or ``reply``) in pieces over ``delay`` s."""

    name: str = "scripted"
    delay: float = 0.0
    reply: str | None = None
    pieces: int = 4
    requests: list[AgentRequest] = field(default_factory=list)

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream(request)

    async def _stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        self.requests.append(request)
        last = next(m for m in reversed(request.context.messages) if m.role is Role.USER)
        text = self.reply if self.reply is not None else f"echo: {last.text}"
        size = -(-len(text) // self.pieces)
        for start in range(0, len(text), size):
            await asyncio.sleep(self.delay / self.pieces)
            yield TextDelta(text[start : start + size])
        yield AgentReply(text, None, request.model)


@dataclass
class Harness:
    bot: DiscordBot
    agent: ScriptedAgent
    manager: SessionManager
    dc: FakeDiscord

    async def stored(self, key: ChatKey) -> list[StoredMessage]:
        session = await self.manager.find_by_chat(key)
        return [] if session is None else await self.manager.messages(session.id)

    async def bot_messages(
        self, channel_id: int, count: int = 1, *, prefix: str = ""
    ) -> list[FakeMessage]:
        """Wait until the bot has ``count`` messages starting with ``prefix`` in a channel."""

        def ready() -> list[FakeMessage] | None:
            found = [
                m for m in self.dc.channel_messages(channel_id) if m.content.startswith(prefix)
            ]
            return found if len(found) >= count else None

        found = await self.dc.wait_for(ready)
        assert found is not None
        return found


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def dc() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=TOKEN, heartbeat_interval_ms=1000) as fake:
        fake.add_guild(
            GUILD,
            "Palaver HQ",
            channels=[(CHANNEL, "general"), (OTHER_CHANNEL, "random")],
            roles=[(FRIENDS, "friends")],
            members=[(ALICE, "alice"), (BOB, "bob"), (EVE, "eve")],
        )
        with fake.patch_discord():
            yield fake
        assert fake.errors == [] and fake.unhandled == []


@pytest.fixture
async def manager(make_manager: ManagerFactory) -> SessionManager:
    """The default budgets: a 5,000-character reply is an ordinary message here."""
    return await make_manager(token_limit=100_000, max_message_tokens=32_000)


def default_access() -> AccessSettings:
    return AccessSettings(allowed_users=[str(ALICE), f"discord:{BOB}"], admins=[f"discord:{ALICE}"])


def make_core(
    manager: SessionManager,
    agent: ScriptedAgent,
    exports: Path,
    *,
    access: AccessSettings | None = None,
    per_minute: float = 600,
) -> Dispatcher:
    return make_dispatcher(
        manager,
        agent,
        access=access or default_access(),
        exports=exports,
        per_minute=per_minute,
        burst=3 if per_minute < 60 else 20,
    )


@pytest.fixture
async def start(dc: FakeDiscord, manager: SessionManager, tmp_path: Path) -> AsyncIterator[Start]:
    bots: list[DiscordBot] = []

    async def make(
        *,
        access: AccessSettings | None = None,
        agent: ScriptedAgent | None = None,
        per_minute: float = 600,
        **settings: Any,
    ) -> Harness:
        agent = agent or ScriptedAgent()
        core = make_core(manager, agent, tmp_path, access=access, per_minute=per_minute)
        options = {"stream_edit_interval_s": 0.2, "connect_timeout_s": 5.0, **settings}
        bot = DiscordBot(DiscordSettings(**options), TOKEN, core, guild_ready_timeout=0.05)
        bot.client.identify_delay = 0.0
        await bot.start()
        bots.append(bot)
        return Harness(bot, agent, manager, dc)

    yield make
    for bot in bots:
        await shut(bot, 2.0)


async def shut(bot: DiscordBot, grace: float) -> None:
    """Shutdown as the app does it: the core drains, then the client closes."""
    await bot.stop_receiving()
    await bot.dispatcher.drain(grace)
    await bot.stop()


def key(channel_id: int, thread_id: int | None = None) -> ChatKey:
    return ChatKey("discord", str(channel_id), None if thread_id is None else str(thread_id))


# ----------------------------------------------------------------------------- DMs


async def test_a_dm_is_a_turn_stored_with_its_author(start: Start, dc: FakeDiscord) -> None:
    h = await start(agent=ScriptedAgent(delay=0.5))
    # Commands are registered globally when no guild is configured.
    assert {c["name"] for c in dc.commands[None]} == {
        "ask",
        "help",
        "project",
        "reset",
        "status",
        "summary",
        "export",
        "stats",
    }
    sent = await dc.user_message(None, "hello there", author_id=ALICE, username="alice")
    dm = dc.dm_channel(ALICE)
    [reply] = await h.bot_messages(dm, prefix="echo: hello there")
    assert reply.reference is None  # a DM answer needs no reply reference
    assert [cid for cid, _ in dc.typing] == [dm]  # typing while the model works

    stored = await h.stored(key(dm))
    assert [(m.role, m.text, m.author_id, m.author_name) for m in stored] == [
        (Role.USER, "hello there", str(ALICE), "alice"),
        (Role.ASSISTANT, "echo: hello there", None, None),
    ]
    assert stored[0].platform_message_id == sent["id"]


# --------------------------------------------------------------------- slash commands


async def test_slash_ask_is_deferred_then_answered(start: Start, dc: FakeDiscord) -> None:
    h = await start()
    payload = await dc.slash_command(
        "ask", {"prompt": "why is the sky blue"}, channel_id=CHANNEL, author_id=ALICE
    )
    record = dc.interaction_responses(payload["id"])
    await dc.wait_for(lambda: record.followups and record.followups[-1].content.startswith("echo"))
    assert record.deferred and not record.ephemeral
    assert record.ack_delay is not None and record.ack_delay < 1.0
    assert record.original is not None
    assert record.original.content == "echo: [alice] why is the sky blue"
    # The answer is in the channel, for everyone in the shared conversation.
    assert [m.content for m in dc.channel_messages(CHANNEL)] == [record.original.content]
    stored = await h.stored(key(CHANNEL))
    assert [(m.role, m.platform_message_id) for m in stored] == [
        (Role.USER, payload["id"]),
        (Role.ASSISTANT, None),
    ]


async def test_a_slow_command_is_still_acknowledged_in_time(start: Start, dc: FakeDiscord) -> None:
    """The model takes 3.3 s, longer than Discord's 3 s window: the defer comes first."""
    h = await start(agent=ScriptedAgent(delay=3.3))
    started = time.monotonic()
    payload = await dc.slash_command(
        "ask", {"prompt": "think hard"}, channel_id=CHANNEL, author_id=ALICE
    )
    record = dc.interaction_responses(payload["id"])
    await dc.wait_for(
        lambda: (
            record.original is not None and record.original.content == "echo: [alice] think hard"
        ),
        timeout=10,
    )
    assert time.monotonic() - started >= 3.3
    assert record.ack_delay is not None and record.ack_delay < 0.5
    assert record.late_callbacks == []
    assert h.agent.requests


async def test_shared_commands_status_export_and_admin_only_stats(
    start: Start, dc: FakeDiscord
) -> None:
    h = await start()
    await dc.user_message(CHANNEL, "remember me", author_id=BOB, username="bob", mentions_bot=True)
    await h.bot_messages(CHANNEL, prefix="echo")

    status = await dc.slash_command("status", channel_id=CHANNEL, author_id=BOB, username="bob")
    record = dc.interaction_responses(status["id"])
    await dc.wait_for(lambda: record.followups)
    assert record.ephemeral and record.followups[0].ephemeral
    assert "Messages: 2; summaries: none yet" in record.followups[0].content

    export = await dc.slash_command("export", channel_id=CHANNEL, author_id=BOB, username="bob")
    record = dc.interaction_responses(export["id"])
    await dc.wait_for(lambda: record.followups)
    [attachment] = record.followups[0].attachments
    assert attachment.filename.endswith(".md") and b"remember me" in attachment.data
    export = await dc.slash_command(
        "export", {"format": "json"}, channel_id=CHANNEL, author_id=BOB, username="bob"
    )
    record = dc.interaction_responses(export["id"])
    await dc.wait_for(lambda: record.followups)
    [attachment] = record.followups[0].attachments
    assert attachment.filename.endswith(".json") and b'"text": "remember me"' in attachment.data

    denied = await dc.slash_command("stats", channel_id=CHANNEL, author_id=BOB, username="bob")
    record = dc.interaction_responses(denied["id"])
    await dc.wait_for(lambda: record.followups)
    assert record.ephemeral and record.followups[0].content.startswith("Only the bot's admins")

    stats = await dc.slash_command("stats", channel_id=CHANNEL, author_id=ALICE)
    record = dc.interaction_responses(stats["id"])
    await dc.wait_for(lambda: record.followups)
    assert record.ephemeral and record.followups[0].content.startswith("Sessions: 1")

    reset = await dc.slash_command("reset", channel_id=CHANNEL, author_id=BOB, username="bob")
    record = dc.interaction_responses(reset["id"])
    await dc.wait_for(lambda: record.followups)
    assert not record.ephemeral and record.followups[0].content.startswith("Started a fresh")
    assert await h.stored(key(CHANNEL)) == []


async def test_a_private_command_typed_in_a_guild_is_answered_by_dm(
    start: Start, dc: FakeDiscord
) -> None:
    h = await start()
    await dc.user_message(CHANNEL, "/stats", author_id=ALICE, mentions_bot=True)
    dm = dc.dm_channel(ALICE)
    [stats] = await h.bot_messages(dm)
    assert stats.content.startswith("Sessions:")
    [note] = await h.bot_messages(CHANNEL)
    assert note.content == "I've sent you the answer privately."

    # DMs closed: nothing private lands in the channel, only the way to ask privately.
    dc.fail(f"POST /channels/{dm}/messages", 403, 50007, "Cannot send messages to this user")
    await dc.user_message(CHANNEL, "/stats", author_id=ALICE, mentions_bot=True)
    [_, closed] = await h.bot_messages(CHANNEL, 2)
    assert "use the /stats slash command" in closed.content
    assert all("Sessions:" not in m.content for m in dc.channel_messages(CHANNEL))


async def test_commands_sync_to_configured_guilds(start: Start, dc: FakeDiscord) -> None:
    await start(command_guilds=[GUILD])
    assert dc.commands[None] == []
    assert "ask" in {c["name"] for c in dc.commands[GUILD]}


# ----------------------------------------------------------------------- guilds


async def test_guild_turn_on_mention_or_reply_and_every_message_stored(
    start: Start, dc: FakeDiscord
) -> None:
    h = await start()
    await dc.user_message(CHANNEL, "I like the blue one", author_id=BOB, username="bob")
    await dc.user_message(
        CHANNEL, "which one does bob like?", author_id=ALICE, username="alice", mentions_bot=True
    )
    [answer] = await h.bot_messages(CHANNEL)
    assert len(h.agent.requests) == 1  # bob's message was not a turn...
    # ...but it is in the context, with its author, and the mention is gone.
    assert answer.content == "echo: [bob] I like the blue one\n\n[alice] which one does bob like?"
    assert answer.reference is not None  # in a channel, the answer replies to the question

    # Replying to the bot's message is addressing it too.
    await dc.user_message(CHANNEL, "thanks", author_id=BOB, username="bob", reply_to=answer.id)
    await h.bot_messages(CHANNEL, 2)
    stored = await h.stored(key(CHANNEL))
    assert [(m.role.value, m.author_name, m.text) for m in stored] == [
        ("user", "bob", "I like the blue one"),
        ("user", "alice", "which one does bob like?"),
        ("assistant", None, answer.content),
        ("user", "bob", "thanks"),
        ("assistant", None, "echo: [bob] thanks"),
    ]
    assert stored[3].metadata == {"reply_to": str(answer.id)}


async def test_guild_mode_all_answers_every_message(start: Start, dc: FakeDiscord) -> None:
    h = await start(guild_mode="all")
    await dc.user_message(CHANNEL, "no mention needed", author_id=BOB, username="bob")
    await h.bot_messages(CHANNEL, prefix="echo: [bob] no mention needed")


async def test_threads_are_separate_sessions(start: Start, dc: FakeDiscord) -> None:
    h = await start()
    thread = dc.snowflake()
    dc.add_thread(thread, CHANNEL, "side topic", owner_id=ALICE)
    await dc.dispatch_thread_create(thread)
    await dc.user_message(CHANNEL, "main secret", author_id=ALICE, mentions_bot=True)
    await h.bot_messages(CHANNEL)
    await dc.user_message(thread, "thread question", author_id=ALICE, mentions_bot=True)
    [in_thread] = await h.bot_messages(thread)
    assert in_thread.content == "echo: [alice] thread question"  # nothing from the channel

    main, side = await h.stored(key(CHANNEL)), await h.stored(key(CHANNEL, thread))
    assert [m.text for m in main] == ["main secret", "echo: [alice] main secret"]
    assert [m.text for m in side] == ["thread question", in_thread.content]
    assert main[0].session_id != side[0].session_id
    # A slash command in the thread works on the thread's session.
    payload = await dc.slash_command("status", channel_id=thread, author_id=ALICE)
    record = dc.interaction_responses(payload["id"])
    await dc.wait_for(lambda: record.followups)
    assert f"Session #{side[0].session_id} " in record.followups[0].content


# ------------------------------------------------------------------------ replies


def fences_balanced(chunk: str) -> bool:
    fence: str | None = None
    for line in chunk.split("\n"):
        if fence is None:
            fence = fence_opener(line)
        elif closes_fence(line, fence):
            fence = None
    return fence is None


async def test_a_long_reply_with_code_streams_then_splits_cleanly(
    start: Start, dc: FakeDiscord
) -> None:
    code = "\n".join(f"def step_{i}(x):\n    return x + {i}  # adds {i}" for i in range(80))
    reply = (
        "Here is the plan, explained at some length. " * 20
        + "\n\n```python\n"
        + code
        + "\n```\n\n"
        + "And a closing paragraph that wraps it all up. " * 12
    ).rstrip()
    assert 4900 < len(reply) < 5300
    h = await start(agent=ScriptedAgent(reply=reply, delay=1.2, pieces=12))
    await dc.user_message(None, "show me", author_id=ALICE)
    dm = dc.dm_channel(ALICE)
    await dc.wait_for(lambda: len(h.agent.requests) == 1)
    await h.bot_messages(dm, 3)
    await dc.wait_for(lambda: dc.channel_messages(dm)[-1].content.endswith("wraps it all up."))
    chunks = [m.content for m in dc.channel_messages(dm)]

    assert len(chunks) >= 3 and all(0 < len(c) <= 2000 for c in chunks)
    assert all(fences_balanced(c) for c in chunks)
    # The code block is cut between lines, closed, and reopened with its language.
    code_chunks = [c for c in chunks if "def step_" in c or "return x" in c]
    assert len(code_chunks) >= 2
    assert all(c.startswith("```python\n") and c.endswith("\n```") for c in code_chunks)
    body = [line for c in chunks for line in c.split("\n") if line not in ("```python", "```")]
    original = [line for line in reply.split("\n") if line not in ("```python", "```")]
    assert [b.rstrip() for b in body if b] == [o.rstrip() for o in original if o]

    # Streamed: the first message was edited as the text grew, at a throttled rate.
    first = dc.channel_messages(dm)[0]
    assert 1 <= len(first.history) <= 1.2 / 0.2 + 2


async def test_an_unclosed_fence_while_streaming_is_closed(start: Start, dc: FakeDiscord) -> None:
    h = await start(agent=ScriptedAgent(reply="Look:\n```js\nlet x = 1;", pieces=2))
    await dc.user_message(None, "code", author_id=ALICE)
    [message] = await h.bot_messages(dc.dm_channel(ALICE))
    assert message.content == "Look:\n```js\nlet x = 1;\n```"


# ------------------------------------------------------------------- attachments


async def test_text_files_are_read_and_other_files_explained(start: Start, dc: FakeDiscord) -> None:
    h = await start()
    notes = ("notes.md", b"# Notes\nbuy milk", "text/markdown")
    await dc.user_message(None, "summarize", author_id=ALICE, attachments=[notes])
    dm = dc.dm_channel(ALICE)
    await h.bot_messages(dm, prefix="echo")
    assert h.agent.requests[-1].context.messages[-1].text == (
        'summarize\n\n<file name="notes.md">\n# Notes\nbuy milk\n</file>'
    )

    photo = ("cat.png", b"\x89PNG\r\n\x1a\n", "image/png")
    await dc.user_message(None, "", author_id=ALICE, attachments=[photo])
    [note] = await h.bot_messages(dm, prefix="I skipped cat.png (not an image I can read")
    assert "I can read messages, captions, text files" in note.content
    assert "50 KB" in note.content
    assert len(h.agent.requests) == 1  # nothing to answer: no turn

    big = ("huge.txt", b"x" * 60_000, "text/plain")
    await dc.user_message(None, "", author_id=ALICE, attachments=[big])
    await h.bot_messages(dm, prefix="I skipped huge.txt (too large)")


async def test_image_attachments_reach_the_model_and_unaddressed_ones_stay_unread(
    start: Start, dc: FakeDiscord
) -> None:
    h = await start()
    shot = png(1920, 1080)
    await dc.user_message(
        None,
        "what's wrong here?",
        author_id=ALICE,
        attachments=[("screen.png", shot, "image/png"), ("notes.pdf", pdf(2), "application/pdf")],
    )
    dm = dc.dm_channel(ALICE)
    await h.bot_messages(dm, prefix="echo")
    request = h.agent.requests[-1]
    newest = request.context.messages[-1]
    assert newest.text == (
        "what's wrong here?\n\n[image: screen.png, 1429x804]\n[PDF: notes.pdf, 2 pages]"
    )
    assert [(r[1], r[4]) for r in newest.media] == [("image/png", 0), ("application/pdf", 2)]
    assert set(request.media) == {r[0] for r in newest.media}  # their data, for the model
    assert len(dc.downloads) == 2

    # In a guild channel, an image that does not address the bot is named, not fetched.
    await dc.user_message(
        CHANNEL,
        "our new logo",
        author_id=BOB,
        username="bob",
        guild_id=GUILD,
        attachments=[("logo.png", png(64, 64), "image/png")],
    )
    async with asyncio.timeout(5):
        while not await h.stored(key(CHANNEL)):  # noqa: ASYNC110 - stored by the bot, no event
            await asyncio.sleep(0.02)
    assert len(dc.downloads) == 2 and len(h.agent.requests) == 1
    assert [m.text for m in await h.stored(key(CHANNEL))] == ["our new logo [file: logo.png]"]


async def test_a_failed_download_is_named_and_the_question_still_answered(
    start: Start, dc: FakeDiscord
) -> None:
    h = await start()
    dc.fail("GET /attachments/", 500)
    notes = ("notes.md", b"# Notes", "text/markdown")
    await dc.user_message(None, "what do you make of it?", author_id=ALICE, attachments=[notes])
    dm = dc.dm_channel(ALICE)
    await h.bot_messages(dm, prefix="I skipped notes.md (the download failed")
    [answer] = await h.bot_messages(dm, prefix="echo")
    assert answer.content == "echo: what do you make of it?"
    question = (await h.stored(key(dm)))[0]
    assert question.text == "what do you make of it?"


async def test_a_question_deleted_before_its_answer_still_gets_it(
    start: Start, dc: FakeDiscord
) -> None:
    h = await start(agent=ScriptedAgent(delay=0.5, pieces=1))  # nothing sent before it goes
    asked = await dc.user_message(
        CHANNEL, "quick one", author_id=BOB, username="bob", mentions_bot=True
    )
    await dc.wait_for(lambda: h.agent.requests)
    await dc.delete_message(int(asked["id"]))
    [answer] = await h.bot_messages(CHANNEL, prefix="echo: [bob] quick one")
    assert answer.reference is None  # nothing left to point at, but the answer is there


# ------------------------------------------------------------------------- access


async def test_a_stranger_is_told_their_id_and_nothing_is_stored(
    start: Start, dc: FakeDiscord
) -> None:
    h = await start()
    await dc.user_message(None, "let me in", author_id=EVE, username="eve")
    dm = dc.dm_channel(EVE)
    [reply] = await h.bot_messages(dm)
    assert f"Your discord user id is {EVE}" in reply.content
    assert f'"discord:{EVE}" to access.allowed_users' in reply.content
    assert await h.manager.find_by_chat(key(dm)) is None
    assert h.agent.requests == []

    # A stranger's guild messages are neither answered nor stored.
    await dc.user_message(CHANNEL, "psst", author_id=EVE, username="eve")
    payload = await dc.slash_command("ask", {"prompt": "hi"}, channel_id=CHANNEL, author_id=EVE)
    record = dc.interaction_responses(payload["id"])
    await dc.wait_for(lambda: record.followups)
    assert record.ephemeral and f"Your discord user id is {EVE}" in record.followups[0].content
    assert await h.manager.find_by_chat(key(CHANNEL)) is None


async def test_roles_guilds_and_channels_let_members_in_there_only(
    start: Start, dc: FakeDiscord
) -> None:
    dc.guilds[GUILD].members[EVE]["roles"] = [str(FRIENDS)]
    h = await start(access=AccessSettings(allowed_roles=[f"discord:{FRIENDS}"]))
    await dc.user_message(CHANNEL, "hello", author_id=EVE, username="eve", mentions_bot=True)
    await h.bot_messages(CHANNEL, prefix="echo: [eve] hello")
    await dc.user_message(CHANNEL, "me too", author_id=BOB, username="bob", mentions_bot=True)
    await h.bot_messages(CHANNEL, prefix="Sorry, this bot is private")
    await dc.user_message(None, "in private?", author_id=EVE, username="eve")
    await h.bot_messages(dc.dm_channel(EVE), prefix="Sorry, this bot is private")

    await shut(h.bot, 1.0)
    h = await start(access=AccessSettings(allowed_guilds=[str(GUILD)]))
    await dc.user_message(
        OTHER_CHANNEL, "guild-wide", author_id=BOB, username="bob", mentions_bot=True
    )
    await h.bot_messages(OTHER_CHANNEL, prefix="echo: [bob] guild-wide")

    await shut(h.bot, 1.0)
    h = await start(access=AccessSettings(allowed_chats=[f"discord:{OTHER_CHANNEL}"]))
    await dc.user_message(CHANNEL, "here?", author_id=BOB, username="bob", mentions_bot=True)
    await dc.user_message(
        OTHER_CHANNEL, "channel-wide", author_id=BOB, username="bob", mentions_bot=True
    )
    await h.bot_messages(OTHER_CHANNEL, prefix="echo: [bob] channel-wide")
    await h.bot_messages(CHANNEL, 2, prefix="Sorry, this bot is private")  # not elsewhere


async def test_the_shared_rate_limit_answers_politely(start: Start, dc: FakeDiscord) -> None:
    h = await start(per_minute=1)
    for i in range(4):
        await dc.user_message(None, f"m{i}", author_id=ALICE)
    dm = dc.dm_channel(ALICE)
    [limited] = await h.bot_messages(dm, prefix="You're sending messages faster")
    assert len(await h.bot_messages(dm, 3, prefix="echo")) == 3
    assert "Please wait" in limited.content
    assert [m.text for m in await h.stored(key(dm)) if m.role is Role.USER] == ["m0", "m1", "m2"]


# ---------------------------------------------------------------------- resilience


async def test_gateway_drop_and_resume_loses_and_duplicates_nothing(
    start: Start, dc: FakeDiscord
) -> None:
    h = await start()
    await dc.drop_connection(hold=True)
    sent = await dc.user_message(None, "sent while away", author_id=ALICE)
    dc.release_gateway()
    await dc.wait_for(lambda: dc.resume_count == 1)
    dm = dc.dm_channel(ALICE)
    await h.bot_messages(dm, prefix="echo: sent while away")

    # The same message delivered again (a replay) is handled once.
    await dc.user_message(None, "sent while away", author_id=ALICE, message_id=int(sent["id"]))
    await dc.user_message(None, "after", author_id=ALICE)
    await h.bot_messages(dm, prefix="echo: after")
    assert [m.content for m in dc.channel_messages(dm)] == ["echo: sent while away", "echo: after"]
    assert [m.text for m in await h.stored(key(dm))] == [
        "sent while away",
        "echo: sent while away",
        "after",
        "echo: after",
    ]
    assert dc.identify_count == 1


async def test_a_reply_discord_refuses_for_a_while_is_delivered_later_once(
    start: Start, dc: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "FIRST_RETRY_S", 0.2)
    h = await start(stream_edit_interval_s=5.0)
    dm = dc.dm_channel(ALICE)
    dc.fail(f"POST /channels/{dm}/messages", 503, times=2)
    await dc.user_message(None, "through an outage", author_id=ALICE)
    [reply] = await h.bot_messages(dm, prefix="echo: through an outage")
    await h.bot.dispatcher.outbox.idle()
    assert [m.content for m in dc.channel_messages(dm)] == [reply.content]
    assert await h.manager.owed(h.bot.dispatcher.outbox.since()) == []


async def test_a_429_discord_py_gives_up_on_is_waited_out_not_refused(
    start: Start, dc: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Cloudflare ban's 429 (no Via header) reaches the port as HTTPException(429):
    it used to be taken for a 4xx refusal, and the reply marked failed."""
    h = await start(stream_edit_interval_s=5.0)
    dm = dc.dm_channel(ALICE)
    dc.rate_limit(f"POST /channels/{dm}/messages", times=1, retry_after=0.2, cloudflare=True)
    await dc.user_message(None, "through a ban", author_id=ALICE)
    [reply] = await h.bot_messages(dm, prefix="echo: through a ban")
    await h.bot.dispatcher.outbox.idle()
    assert [m.content for m in dc.channel_messages(dm)] == [reply.content]
    assert await h.manager.owed(h.bot.dispatcher.outbox.since()) == []


async def test_a_reply_discord_refuses_for_good_is_marked_failed_and_said_once(
    start: Start, dc: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 400 used to be retried like an outage, forever."""
    monkeypatch.setattr(delivery, "FIRST_RETRY_S", 0.2)
    h = await start(stream_edit_interval_s=5.0)
    dm = dc.dm_channel(ALICE)
    dc.fail(f"POST /channels/{dm}/messages", 400, 50006, "Cannot send an empty message")
    await dc.user_message(None, "refuse this", author_id=ALICE)
    [notice] = await h.bot_messages(dm, prefix=delivery.REFUSED)
    await h.bot.dispatcher.outbox.idle()
    assert [m.content for m in dc.channel_messages(dm)] == [notice.content]
    [failed] = await h.manager.owed(h.bot.dispatcher.outbox.since())
    assert (failed.text, failed.delivery) == ("echo: refuse this", Delivery.FAILED)


async def test_stop_lets_a_turn_in_flight_finish(start: Start, dc: FakeDiscord) -> None:
    h = await start(agent=ScriptedAgent(delay=0.6))
    await dc.user_message(None, "quick, before you go", author_id=ALICE)
    await dc.wait_for(lambda: h.agent.requests)
    await shut(h.bot, 5.0)
    dm = dc.dm_channel(ALICE)
    assert [m.content for m in dc.channel_messages(dm)] == ["echo: quick, before you go"]
    assert h.bot.client.is_closed()


async def test_discord_out_of_reach_at_start_is_retried_in_the_background(
    start: Start, dc: FakeDiscord
) -> None:
    """A failed login used to close the HTTP session and the retry died on "Session is
    closed", ending the whole process, Telegram included."""
    dc.fail("GET /users/@me", 503, times=2)
    h = await start(connect_timeout_s=0.5)  # returns: Discord is retried in the background
    assert not h.bot.ready.is_set()
    async with asyncio.timeout(15):
        await h.bot.ready.wait()
    await dc.user_message(None, "finally up", author_id=ALICE)
    await h.bot_messages(dc.dm_channel(ALICE), prefix="echo: finally up")


async def test_a_bad_token_is_a_clear_error(
    dc: FakeDiscord, manager: SessionManager, tmp_path: Path
) -> None:
    core = make_core(manager, ScriptedAgent(), tmp_path)
    bot = DiscordBot(DiscordSettings(), "not-the-token", core)
    with pytest.raises(PalaverError, match="Discord rejected DISCORD_BOT_TOKEN"):
        await bot.start()
    assert bot.client.is_closed()


async def test_a_missing_message_content_intent_is_a_clear_error(
    manager: SessionManager, tmp_path: Path
) -> None:
    core = make_core(manager, ScriptedAgent(), tmp_path)
    async with FakeDiscord(token=TOKEN, privileged_intents=False) as fake:
        with fake.patch_discord():
            bot = DiscordBot(DiscordSettings(), TOKEN, core)
            with pytest.raises(PalaverError, match="Message Content Intent"):
                await bot.start()
            # Without the intent the bot starts; guild messages then need a mention.
            bot = DiscordBot(
                DiscordSettings(message_content=False), TOKEN, core, guild_ready_timeout=0.05
            )
            await bot.start()
            await shut(bot, 1.0)


# ------------------------------------------------------- one process, both platforms

TG_TOKEN = "123:ABC"
TG_ANN = 1001


@pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")
def both_bots(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic, discord: DiscordSettings
) -> Config:
    """An application serving Telegram and Discord, against the fakes."""
    return Config(
        palaver=PalaverSettings(data_dir=tmp_path),
        database=DatabaseSettings(url=db_url),
        access=AccessSettings(allowed_users=[f"telegram:{TG_ANN}", f"discord:{ALICE}"]),
        claude=ClaudeSettings(base_url=claude.url, max_retries=0),
        telegram=TelegramSettings(base_url=tg.base_url, base_file_url=tg.base_file_url),
        discord=discord,
        secrets=Secrets(
            telegram_bot_token=SecretStr(TG_TOKEN),
            discord_bot_token=SecretStr(TOKEN),
            anthropic_api_key=SecretStr(claude.api_key),
        ),
    )


async def test_telegram_and_discord_served_together_share_one_database(
    tmp_path: Path, db_url: str, dc: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application builds both bots; a project selected on both platforms is one
    session; a Discord outage does not hold Telegram up, and Discord catches up after."""
    monkeypatch.setattr(discord_bot, "GUILD_READY_TIMEOUT_S", 0.05)
    async with FakeTelegram(token=TG_TOKEN) as tg, FakeAnthropic() as claude:
        streaming = DiscordSettings(stream_edit_interval_s=0.2)
        config = both_bots(tmp_path, db_url, tg, claude, streaming)
        app = Palaver(config)
        await app.start()
        interfaces = app.build_interfaces()
        assert [i.name for i in interfaces] == ["telegram", "discord"]
        try:
            for interface in interfaces:
                await interface.start()
            dm = dc.dm_channel(ALICE)
            telegram_chat, discord_chat = ChatKey("telegram", str(TG_ANN)), key(dm)
            await app.manager.create_project("garden")
            await app.manager.select_project(telegram_chat, "garden")
            await app.manager.select_project(discord_chat, "garden")

            tg.user_message(TG_ANN, "We plant tomatoes in May.")
            await tg.wait_for_message(TG_ANN)

            await dc.drop_connection(hold=True)  # Discord is down...
            await dc.user_message(None, "What do we plant in May?", author_id=ALICE)
            tg.user_message(TG_ANN, "And basil in June.")
            await tg.wait_for_message(TG_ANN, count=2)  # ...and Telegram carries on.
            assert len(claude.requests) == 2

            dc.release_gateway()  # Discord resumes and gets the missed message once.
            await dc.wait_for(lambda: dc.channel_messages(dm), timeout=10)
            [answer] = dc.channel_messages(dm)
            await dc.wait_for(lambda: len(claude.requests) == 3)
            prompt = str(claude.requests[-1]["messages"])
            assert "We plant tomatoes in May." in prompt and "And basil in June." in prompt

            telegram_session = await app.manager.find_by_chat(telegram_chat)
            discord_session = await app.manager.find_by_chat(discord_chat)
            assert telegram_session is not None and discord_session is not None
            assert telegram_session.id == discord_session.id
            stored = await app.manager.messages(discord_session.id)
            assert [(m.role, m.author_id) for m in stored] == [
                (Role.USER, str(TG_ANN)),
                (Role.ASSISTANT, None),
                (Role.USER, str(TG_ANN)),
                (Role.ASSISTANT, None),
                (Role.USER, str(ALICE)),
                (Role.ASSISTANT, None),
            ]
            await dc.wait_for(lambda: answer.content == stored[-1].text)
        finally:
            await app.close_interfaces(interfaces, 2.0)
            await app.stop()


async def test_run_exits_non_zero_on_a_bad_discord_token(
    tmp_path: Path, sqlite_url: str, dc: FakeDiscord, capsys: pytest.CaptureFixture[str]
) -> None:
    config = Config(
        palaver=PalaverSettings(data_dir=tmp_path),
        database=DatabaseSettings(url=sqlite_url),
        secrets=Secrets(discord_bot_token=SecretStr("not-the-token")),
    )
    assert await serve(config, console_only=False) == 1
    assert "cannot start: Discord rejected DISCORD_BOT_TOKEN" in capsys.readouterr().err


async def test_discord_down_at_start_holds_up_nothing_and_telegram_serves_meanwhile(
    tmp_path: Path, db_url: str, dc: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both bots in one application, Discord out of reach when it starts: the start
    returns, Telegram answers while Discord is retried, and Discord answers once it is
    back (it used to end the whole process, Telegram included)."""
    monkeypatch.setattr(discord_bot, "GUILD_READY_TIMEOUT_S", 0.05)
    dc.fail("GET /users/@me", 503, times=3)
    async with FakeTelegram(token=TG_TOKEN) as tg, FakeAnthropic() as claude:
        config = both_bots(tmp_path, db_url, tg, claude, DiscordSettings(connect_timeout_s=0.5))
        app = Palaver(config)
        await app.start()
        interfaces = app.build_interfaces()
        try:
            for interface in interfaces:
                await interface.start()  # Discord's returns: it retries in the background
            discord = next(i for i in interfaces if isinstance(i, DiscordBot))
            assert not discord.ready.is_set()
            tg.user_message(TG_ANN, "Is anyone there?")
            await tg.wait_for_message(TG_ANN)
            async with asyncio.timeout(15):
                await discord.ready.wait()
            await dc.user_message(None, "and here?", author_id=ALICE)
            dm = dc.dm_channel(ALICE)
            await dc.wait_for(lambda: dc.channel_messages(dm), timeout=10)
        finally:
            await app.close_interfaces(interfaces, 2.0)
            await app.stop()
