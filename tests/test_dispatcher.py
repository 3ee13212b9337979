"""The conversation core's rules, tested against the dispatcher with an in-memory port.

Every interface goes through these rules, so they are tested once here; the wire
tests (test_telegram_bot, test_discord_bot) show the translation.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import conversation.delivery as delivery
from agents.base import AgentEvent, AgentReply, AgentRequest, TextDelta
from agents.offline import OfflineAgent
from conversation.access import AccessPolicy, Actor
from conversation.delivery import Outbox
from conversation.dispatcher import Dispatcher
from conversation.inbound import Attachment, Inbound
from conversation.registry import parse_command
from conversation.settings import AccessSettings
from memory.manager import SessionManager
from memory.store import utcnow
from memory.types import ChatKey, Delivery, Role, SessionStatus
from tests.core import RecordingPort, RetryLater, Unreachable, group_port, make_dispatcher

DM = ChatKey("telegram", "11")
GROUP = ChatKey("telegram", "-100200", "5")
ANN = Actor("telegram", "11", "Ann")
BOB = Actor("telegram", "22", "Bob")
EVE = Actor("telegram", "66", "Eve")  # a stranger
OPERATOR = Actor("console", "me", "me")
ACCESS = AccessSettings(allowed_users=["telegram:11", "22"], admins=["telegram:11"])


class Echo:
    """A model that streams ``echo: <last user message>`` in two pieces."""

    name = "echo"

    def __init__(self) -> None:
        self.requests: list[AgentRequest] = []
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream(request)

    async def _stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        self.requests.append(request)
        self.asked.set()
        last = next(m for m in reversed(request.context.messages) if m.role is Role.USER)
        text = f"echo: {last.text}"
        yield TextDelta(text[:3])
        if self.gate is not None:
            await self.gate.wait()
        yield TextDelta(text[3:])
        yield AgentReply(text, None, request.model)


@pytest.fixture
def agent() -> Echo:
    return Echo()


@pytest.fixture
def core(manager: SessionManager, agent: Echo, tmp_path: Path) -> Dispatcher:
    return make_dispatcher(manager, agent, access=ACCESS, exports=tmp_path / "exports")


def say(
    text: str,
    actor: Actor = ANN,
    key: ChatKey = DM,
    message_id: str | None = None,
    **options: Any,
) -> Inbound:
    private = key == DM or actor.interface == "console"
    return Inbound(key, actor, text, message_id, private=private, **options)


async def history(manager: SessionManager, key: ChatKey) -> list[tuple[Role, str]]:
    session = await manager.find_by_chat(key)
    return [] if session is None else [(m.role, m.text) for m in await manager.messages(session.id)]


# -- access ----------------------------------------------------------------------------------


async def test_a_stranger_is_told_their_id_once_and_nothing_is_stored_or_fetched(
    core: Dispatcher, manager: SessionManager, agent: Echo
) -> None:
    fetched: list[str] = []

    async def fetch() -> bytes:
        fetched.append("yes")
        return b"secret"

    port = RecordingPort()
    file = Attachment("notes.md", "file", "text/markdown", 6, fetch)
    await core.handle(say("let me in", EVE, message_id="1", attachments=(file,)), port)
    await core.handle(say("please", EVE, message_id="2"), port)
    await core.handle(say("/status", EVE, message_id="3"), port)
    assert len(port.sent) == 1
    assert "Your telegram user id is 66" in port.texts[0]
    assert '"telegram:66" to access.allowed_users' in port.texts[0]
    assert await manager.find_by_chat(DM) is None
    assert fetched == [] and agent.requests == []


async def test_nobody_is_allowed_by_default_but_the_operator() -> None:
    policy = AccessPolicy(AccessSettings())
    assert not policy.allows(ANN)
    assert policy.allows(OPERATOR) and policy.is_admin(OPERATOR)
    assert AccessPolicy(AccessSettings(allow_everyone=True)).allows(ANN)
    assert AccessPolicy(AccessSettings(allowed_users=["11"])).allows(ANN)
    assert not AccessPolicy(AccessSettings(allowed_users=["discord:11"])).allows(ANN)


# -- rate limits -----------------------------------------------------------------------------


async def test_over_the_rate_limit_the_user_is_told_once_and_nothing_is_stored(
    manager: SessionManager, tmp_path: Path
) -> None:
    core = make_dispatcher(
        manager, OfflineAgent(), access=ACCESS, exports=tmp_path, per_minute=1, burst=3
    )
    port = RecordingPort()
    for i in range(5):
        await core.handle(say(f"m{i}", message_id=str(i)), port)
    told = [t for t in port.texts if "faster than I can answer" in t]
    assert len(told) == 1 and "Please wait" in told[0]
    assert [t for r, t in await history(manager, DM) if r is Role.USER] == ["m0", "m1", "m2"]
    # Commands count too.
    await core.handle(say("/help", message_id="9"), port)
    assert not any(t.startswith("I'm Palaver") for t in port.texts)


async def test_the_operator_at_the_console_is_never_rate_limited(
    manager: SessionManager, tmp_path: Path
) -> None:
    core = make_dispatcher(
        manager, OfflineAgent(), access=ACCESS, exports=tmp_path, per_minute=1, burst=1
    )
    port = RecordingPort()
    console = ChatKey("console", "local")
    for i in range(12):
        await core.handle(say(f"pasted line {i}", OPERATOR, console), port)
    assert not any("faster" in t for t in port.texts)
    assert len([r for r, _ in await history(manager, console) if r is Role.USER]) == 12


# -- groups ----------------------------------------------------------------------------------


async def test_a_group_keeps_what_it_was_not_asked_and_the_model_sees_who_said_what(
    core: Dispatcher, manager: SessionManager, agent: Echo
) -> None:
    port = group_port()
    await core.handle(say("I prefer the blue one", BOB, GROUP, "1", addressed=False), port)
    assert port.sent == [] and agent.requests == []
    await core.handle(say("what does Bob prefer?", ANN, GROUP, "2"), port)
    assert port.sent[-1].markdown and port.texts[-1].startswith("echo:")
    [request] = agent.requests
    assert request.context.messages[0].text == (
        "[Bob] I prefer the blue one\n\n[Ann] what does Bob prefer?"
    )


async def test_a_bare_mention_is_asked_what_it_wants(core: Dispatcher, agent: Echo) -> None:
    port = group_port()
    await core.handle(say("", ANN, GROUP, "1"), port)
    assert port.texts == ["Yes? Write your question in the same message."]
    assert agent.requests == []


# -- commands --------------------------------------------------------------------------------


def test_parse_command() -> None:
    assert parse_command("/reset") == ("reset", "")
    assert parse_command("/Status now") == ("status", "now")
    assert parse_command("/export\njson") == ("export", "json")
    assert parse_command("hello /reset") is None
    assert parse_command("/") is None
    assert parse_command("/../etc") is None
    assert parse_command("/help@other_bot") is None  # another bot's: just text


async def test_help_reset_status_and_unknown_commands(
    core: Dispatcher, manager: SessionManager
) -> None:
    port = RecordingPort()
    await core.handle(say("/status"), port)
    assert port.texts[-1].startswith("No conversation yet")
    await core.handle(say("hello", message_id="1"), port)
    await core.handle(say("/status"), port)
    status = port.texts[-1]
    assert "Messages: 2; summaries: none yet" in status and "model claude-sonnet-4-6" in status
    assert "active; continues until" in status
    before = await manager.find_by_chat(DM)
    await core.handle(say("/new"), port)
    assert port.texts[-1].startswith("Started a fresh conversation")
    after = await manager.find_by_chat(DM)
    assert before is not None and after is not None and after.id != before.id
    assert len(await manager.messages(before.id)) == 2  # the old one is kept
    await core.handle(say("/start"), port)
    assert "/reset, /new - Start a fresh conversation" in port.texts[-1]
    assert "/stats" in port.texts[-1]  # Ann is an admin
    await core.handle(say("/frobnicate"), port)
    assert port.texts[-1] == "Unknown command /frobnicate. Send /help to see what I can do."


async def test_an_unknown_slash_word_in_a_group_is_just_a_message(
    core: Dispatcher, manager: SessionManager
) -> None:
    port = group_port()
    await core.handle(say("/shrug whatever", BOB, GROUP, "1", addressed=False), port)
    assert port.sent == []
    assert await history(manager, GROUP) == [(Role.USER, "/shrug whatever")]


async def test_private_answers_go_to_the_asker_alone(core: Dispatcher) -> None:
    port = group_port()
    await core.handle(say("/status", ANN, GROUP), port)
    assert port.texts == ["I've sent you the answer privately."]
    assert port.direct is not None and port.direct.texts[0].startswith("No conversation yet")
    # Where the asker cannot be written to, the group is told how, and nothing else.
    closed = group_port()
    closed.direct = RecordingPort(fail_with=Unreachable("blocked"))
    await core.handle(say("/summary", ANN, GROUP), closed)
    assert closed.texts == ["open a private chat and send /summary there"]


async def test_admin_commands_refuse_others_privately(core: Dispatcher) -> None:
    port = group_port()
    await core.handle(say("/stats", BOB, GROUP), port)
    assert port.direct is not None
    assert port.direct.texts == ["Only the bot's admins can use that command."]
    assert core.answers_privately(say("/stats", BOB, GROUP))
    assert core.answers_privately(say("/export", BOB, GROUP))
    assert not core.answers_privately(say("/reset", BOB, GROUP))
    assert core.answers_privately(say("/reset", EVE, GROUP))  # a stranger's notice


async def test_export_sends_a_file_compressed_or_split_to_fit_the_platform(
    core: Dispatcher, manager: SessionManager, tmp_path: Path
) -> None:
    port = RecordingPort()
    for i in range(30):
        await core.handle(say(f"line {i} " + "lorem ipsum " * 20, message_id=str(i)), port)
    await core.handle(say("/export json"), port)
    exported = port.sent[-1]
    assert exported.file == "palaver-telegram-conversation-1.json" and exported.data
    document = json.loads(exported.data)
    assert document["format"] == "palaver-export/1"
    assert [m["text"] for m in document["messages"]][:1] == ["line 0 " + "lorem ipsum " * 20]
    assert len(document["messages"]) == 60

    small = RecordingPort(upload_limit=3000)
    await core.handle(say("/export"), small)
    [packed] = small.sent
    assert packed.file == "palaver-telegram-conversation-1.md.gz" and packed.data
    assert b"line 29" in gzip.decompress(packed.data)
    assert "(gzip-compressed)" in packed.text

    tiny = RecordingPort(upload_limit=400)
    await core.handle(say("/export csv"), tiny)
    parts = [s for s in tiny.sent if s.file]
    assert len(parts) > 1 and all(len(p.data or b"") <= 400 for p in parts)
    joined = gzip.decompress(b"".join(p.data or b"" for p in parts)).decode()
    assert joined.startswith("seq,role,author_id") and "line 29" in joined
    assert "join them with" in tiny.sent[0].text
    assert list((tmp_path / "exports").iterdir()) == []  # temporary files are gone


async def test_a_failed_upload_is_told(core: Dispatcher) -> None:
    port = RecordingPort(fail_uploads=OSError("refused"))
    await core.handle(say("hello", message_id="1"), port)
    await core.handle(say("/export"), port)
    assert "The upload of palaver-telegram-conversation-1.md failed" in port.texts[-1]


# -- messages --------------------------------------------------------------------------------


async def test_an_edit_is_not_answered_and_a_private_chat_is_told_once(
    core: Dispatcher, agent: Echo
) -> None:
    port = RecordingPort()
    await core.handle(say("fixed", message_id="1", edited=True), port)
    await core.handle(say("fixed!", message_id="1", edited=True), port)
    assert port.texts == [
        "I answer new messages only, so I didn't act on your edit. "
        "Send the corrected text as a new message if you'd like an answer to it."
    ]
    group = group_port()
    await core.handle(say("edited", ANN, GROUP, "2", edited=True), group)
    assert group.sent == [] and agent.requests == []


async def test_files_are_read_refused_with_one_note_and_captions_answered(
    core: Dispatcher, agent: Echo
) -> None:
    async def notes() -> bytes:
        return b"# Notes\nbuy milk"

    async def broken() -> bytes:
        raise OSError("connection reset")

    port = RecordingPort()
    text_file = Attachment("notes.md", "file", "text/markdown", 16, notes)
    await core.handle(say("summarize", message_id="1", attachments=(text_file,)), port)
    assert agent.requests[-1].context.messages[-1].text == (
        'summarize\n\n<file name="notes.md">\n# Notes\nbuy milk\n</file>'
    )
    photo = Attachment("a photo", "photo")
    for i in range(2):  # an album: one note for its parts
        await core.handle(say("", message_id=f"p{i}", attachments=(photo,), album="A"), port)
    notes_sent = [t for t in port.texts if t.startswith("I skipped a photo")]
    assert len(notes_sent) == 1 and len(agent.requests) == 1
    await core.handle(say("look at this", message_id="c", attachments=(photo,)), port)
    assert port.texts[-1] == "echo: look at this"  # the caption is answered
    failing = Attachment("log.txt", "file", "text/plain", 10, broken)
    await core.handle(say("what failed?", message_id="d", attachments=(failing,)), port)
    assert "log.txt (the download failed; please send it again)" in port.texts[-2]
    assert port.texts[-1] == "echo: what failed?"


async def test_bad_input_and_hostile_values_are_refused_plainly(
    core: Dispatcher, manager: SessionManager
) -> None:
    port = RecordingPort()
    await core.handle(say("\x00\x00", message_id="1"), port)
    assert port.texts[-1] == (
        "I couldn't take that message: message contains NUL bytes, which cannot be stored as text."
    )
    await core.handle(say("   \n\t ", message_id="2"), port)
    assert port.texts[-1] == "Yes? Write your question in the same message."
    surrogate = ChatKey("telegram", "bad\udc80chat")
    await core.handle(say("hello", ANN, surrogate, "3"), port)
    assert "the chat id is not valid Unicode text" in port.texts[-1]
    await core.handle(say("hi", message_id="x" * 200), port)
    assert "platform message id is longer than 100 characters" in port.texts[-1]
    assert await history(manager, DM) == []


async def test_a_crash_in_the_core_is_told_plainly(
    core: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(core.turn.manager, "resolve", explode)
    port = RecordingPort()
    await core.handle(say("hello", message_id="1"), port)
    assert port.texts == [
        "Something went wrong on my side. Your message is saved; please try again."
    ]


async def test_one_chats_messages_are_handled_in_order_and_chats_at_once(
    core: Dispatcher, agent: Echo
) -> None:
    agent.gate = asyncio.Event()
    first, second, other = RecordingPort(), RecordingPort(), group_port()
    tasks = [
        asyncio.create_task(core.handle(say("first", message_id="1"), first)),
        asyncio.create_task(core.handle(say("second", message_id="2"), second)),
    ]
    async with asyncio.timeout(5):
        await agent.asked.wait()
    for _ in range(20):  # the second had every chance to start meanwhile
        await asyncio.sleep(0)
    assert len(agent.requests) == 1  # the second waits behind the first
    agent.gate.set()
    agent.gate = None
    await core.handle(say("meanwhile", BOB, GROUP, "3"), other)
    await asyncio.gather(*tasks)
    assert first.texts == ["echo: first"] and second.texts == ["echo: second"]
    assert other.texts == ["echo: [Bob] meanwhile"]


async def test_the_same_message_twice_is_answered_once(
    core: Dispatcher, agent: Echo, manager: SessionManager
) -> None:
    port = RecordingPort()
    await asyncio.gather(
        core.handle(say("hello", message_id="7"), port),
        core.handle(say("hello", message_id="7"), port),
    )
    assert port.texts == ["echo: hello"] and len(agent.requests) == 1
    slash = RecordingPort()
    await core.handle(say("hello", message_id="7", needs_answer=True), slash)
    assert slash.texts == ["Already answered."]
    assert len(await history(manager, DM)) == 2


# -- delivery --------------------------------------------------------------------------------


async def test_a_reply_the_platform_delays_is_delivered_later_in_order_once(
    core: Dispatcher, manager: SessionManager
) -> None:
    port = RecordingPort(fail_with=RetryLater(0.2))
    await core.handle(say("first", message_id="1"), port)
    await core.handle(say("second", message_id="2"), port)
    assert port.sent == []
    owed = await manager.owed(core.outbox.since())
    assert [(m.text, m.delivery) for m in owed] == [
        ("echo: first", Delivery.PENDING),
        ("echo: second", Delivery.PENDING),
    ]
    port.fail_with = None
    async with asyncio.timeout(5):
        while len(port.sent) < 2:
            await port.delivered.wait()
            port.delivered.clear()
    await core.outbox.idle()
    assert port.texts == ["echo: first", "echo: second"]  # once
    assert await manager.owed(core.outbox.since()) == []


async def test_an_unreachable_chat_gets_what_it_missed_when_it_writes_again(
    core: Dispatcher, manager: SessionManager
) -> None:
    blocked = RecordingPort(fail_with=Unreachable("the bot was blocked"))
    await core.handle(say("are you there?", message_id="1"), blocked)
    [failed] = await manager.owed(core.outbox.since())
    assert failed.delivery is Delivery.FAILED and failed.text == "echo: are you there?"
    back = RecordingPort()
    await core.handle(say("unblocked you", message_id="2"), back)
    async with asyncio.timeout(5):
        while len(back.sent) < 2:
            await back.delivered.wait()
            back.delivered.clear()
    await core.outbox.idle()
    assert sorted(back.texts) == sorted(
        ["echo: unblocked you", "I couldn't deliver this answer earlier:\n\necho: are you there?"]
    )
    assert await manager.owed(core.outbox.since()) == []


async def test_a_reply_that_keeps_failing_is_given_up_past_the_outbox_window(
    manager: SessionManager, agent: Echo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any fault other than a wait or an unreachable chat used to be retried forever."""
    monkeypatch.setattr(delivery, "FIRST_RETRY_S", 0.1)
    core = make_dispatcher(manager, agent, access=ACCESS, exports=tmp_path)
    core.outbox = Outbox(manager, 0.3)
    down = RecordingPort(fail_with=ConnectionError("the platform is down"))
    await core.handle(say("anyone?", message_id="1"), down)
    async with asyncio.timeout(10):
        await core.outbox.idle()
    assert down.sent == []
    [failed] = await manager.owed(datetime.now(UTC) - timedelta(hours=1))
    assert (failed.text, failed.delivery) == ("echo: anyone?", Delivery.FAILED)


@pytest.mark.parametrize(
    "failure",
    [RetryLater(600), Unreachable("the bot was blocked"), ConnectionError("reset")],
    ids=["retry-later", "unreachable", "network"],
)
async def test_a_notice_that_fails_costs_neither_the_question_nor_the_reply(
    core: Dispatcher, manager: SessionManager, agent: Echo, failure: Exception
) -> None:
    """A failing "fresh conversation" notice used to end the handler before the reply
    was handed to the outbox (it stayed pending until a restart); a failing note about
    unreadable files ended it before the question was even stored."""
    from tests.test_lifecycle import quiet_for

    port = RecordingPort()
    await core.handle(say("my dog is called Biscuit", message_id="1"), port)
    old = await manager.find_by_chat(DM)
    assert old is not None
    await quiet_for(manager, old.id, manager.expire_after_s + 60)
    port.fail_plain = failure
    await core.handle(say("hello again", message_id="2"), port)
    assert port.texts[-1] == "echo: hello again"

    photo = Attachment("a photo", "photo")
    await core.handle(say("look at this", message_id="3", attachments=(photo,)), port)
    assert port.texts[-1] == "echo: look at this"
    assert (await history(manager, DM))[-2:] == [
        (Role.USER, "look at this"),
        (Role.ASSISTANT, "echo: look at this"),
    ]
    await core.outbox.idle()
    assert await manager.owed(core.outbox.since()) == []


async def test_during_shutdown_a_message_is_kept_and_answered_after_the_restart(
    manager: SessionManager, tmp_path: Path, agent: Echo
) -> None:
    core = make_dispatcher(manager, agent, access=ACCESS, exports=tmp_path)
    await core.drain(1.0)
    port = RecordingPort()
    await core.handle(say("while you restart", message_id="1"), port)
    assert port.texts == [
        "I'm restarting; your message is saved and I'll answer it as soon as I'm back."
    ]
    assert agent.requests == []

    answered = RecordingPort()

    class Platform:
        name = "telegram"

        def outbound(self, key: ChatKey, reply_to: str | None) -> RecordingPort:
            return answered

        def is_private(self, key: ChatKey) -> bool:
            return True

        async def start(self) -> None: ...

        async def stop_receiving(self) -> None: ...

        async def stop(self) -> None: ...

    restarted = make_dispatcher(manager, agent, access=ACCESS, exports=tmp_path)
    platform = Platform()
    assert await restarted.resume({"telegram": platform}) == 1
    async with asyncio.timeout(5):
        await restarted.settled()
    assert answered.texts == ["echo: while you restart"]
    assert await history(manager, DM) == [
        (Role.USER, "while you restart"),
        (Role.ASSISTANT, "echo: while you restart"),
    ]
    assert await manager.owed(restarted.outbox.since()) == []


async def test_hostile_values_at_the_turn_itself_are_refused_plainly(
    core: Dispatcher, manager: SessionManager
) -> None:
    """The turn is the boundary: values adapters supply are checked there too."""
    from conversation.turn import Outcome, Question

    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["next"] = {}
        node = node["next"]
    result = await core.turn.handle(Question(DM, ANN, "hello", "1", metadata=deep))
    assert result.outcome is Outcome.REJECTED
    assert "message metadata is nested deeper than 20 levels" in result.text
    surrogate = await core.turn.handle(Question(ChatKey("telegram", "\udc80"), ANN, "hi", "2"))
    assert surrogate.outcome is Outcome.REJECTED
    assert "the chat id is not valid Unicode text" in surrogate.text
    assert await history(manager, DM) == []


async def test_status_shows_the_context_as_the_summary_trigger_counts_it(
    core: Dispatcher, manager: SessionManager
) -> None:
    """/status used to leave out the system prompt and the model's calibration, so
    summaries began at about 65% by its own count while it said 70%."""
    port = RecordingPort()
    for i in range(4):
        await core.handle(say(f"message {i} " + "word " * 40, message_id=str(i)), port)
    session = await manager.find_by_chat(DM)
    assert session is not None
    manager.note_calibration("claude-sonnet-4-6", 1000, 1300)  # the model counts 30% more
    profile = core.turn.profile(None)
    stats = await manager.session_stats(
        session.id, system_prompt=profile.system_prompt, model=profile.model
    )
    raw = await manager.build_context(session.id, system_prompt=profile.system_prompt)
    assert stats.context_tokens == round(raw.raw_tokens * 1.3)
    await core.handle(say("/status"), port)
    assert f"Context: {stats.context_tokens:,} of" in port.texts[-1]


async def test_a_chat_whose_session_expired_is_told_it_starts_fresh_with_a_summary(
    core: Dispatcher, manager: SessionManager
) -> None:
    from tests.test_lifecycle import quiet_for

    port = RecordingPort()
    await core.handle(say("my dog is called Biscuit", message_id="1"), port)
    old = await manager.find_by_chat(DM)
    assert old is not None
    await quiet_for(manager, old.id, manager.expire_after_s + 60)
    await core.handle(say("hello again", message_id="2"), port)
    assert port.texts[-2].startswith("It's been a while, so this is a fresh conversation")
    assert port.texts[-1] == "echo: hello again"
    new = await manager.find_by_chat(DM)
    assert new is not None and new.id != old.id and new.carried_summary
    await core.handle(say("and now?", message_id="3"), port)
    assert port.texts[-1] == "echo: and now?"
    assert not any(t.startswith("It's been") for t in port.texts[-2:])


async def quiet_chat(core: Dispatcher, manager: SessionManager, port: RecordingPort) -> int:
    """A chat whose session has been quiet for longer than ``idle_after_s``."""
    from tests.test_lifecycle import quiet_for

    await core.handle(say("the code word is heron", message_id="1"), port)
    session = await manager.find_by_chat(DM)
    assert session is not None
    await quiet_for(manager, session.id, manager.settings.idle_after_s + 60)
    return session.id


def status_line(manager: SessionManager, session_id: int, state: str, last: datetime) -> str:
    """The first line /status says: the state, and when the session expires."""
    expires = last + timedelta(seconds=manager.expire_after_s)
    return (
        f"Session #{session_id} ({state}; continues until "
        f"{expires:%Y-%m-%d %H:%M} UTC unless you write again), model claude-sonnet-4-6"
    )


async def test_status_shows_an_idle_session_and_when_it_expires(
    core: Dispatcher, manager: SessionManager
) -> None:
    port = RecordingPort()
    sid = await quiet_chat(core, manager, port)
    # The finalize job's first step: the quiet session is marked idle.
    idle_after = timedelta(seconds=manager.settings.idle_after_s)
    assert await manager.store.sessions.mark_idle(utcnow() - idle_after) == [sid]
    quiet = await manager.get(sid)
    await core.handle(say("/status"), port)
    assert port.texts[-1].splitlines()[0] == status_line(
        manager, sid, "idle", quiet.last_activity_at
    )
    assert (await manager.get(sid)).status is SessionStatus.IDLE  # asking is no activity


async def test_status_shows_a_finalized_session_and_when_it_expires(
    core: Dispatcher, manager: SessionManager
) -> None:
    port = RecordingPort()
    sid = await quiet_chat(core, manager, port)
    # The finalize job: marked idle, the closing summary written, finalized.
    assert (await manager.finalize_idle())["finalized"] == 1
    quiet = await manager.get(sid)
    assert quiet.status is SessionStatus.FINALIZED and quiet.closing_summary
    await core.handle(say("/status"), port)
    assert port.texts[-1].splitlines()[0] == status_line(
        manager, sid, "finalized", quiet.last_activity_at
    )
    assert (await manager.get(sid)).status is SessionStatus.FINALIZED

    # Writing again before it expires continues the same session, active again.
    await core.handle(say("still there?", message_id="2"), port)
    await core.handle(say("/status"), port)
    again = await manager.get(sid)
    assert again.status is SessionStatus.ACTIVE and again.last_activity_at > quiet.last_activity_at
    assert port.texts[-1].splitlines()[0] == status_line(
        manager, sid, "active", again.last_activity_at
    )


async def test_status_shows_the_state_the_lifecycle_has_reached_before_the_jobs_store_it(
    core: Dispatcher, manager: SessionManager
) -> None:
    """The jobs store a state a little after it is reached (finalize runs every
    minute, expire every five, or not at all when jobs are off). /status used to show
    the stored one: "active" for a session quiet past idle_after_s, and past
    expire_after_s "active; continues until" a time already gone, though the next
    message starts a fresh conversation."""
    from tests.test_lifecycle import quiet_for

    port = RecordingPort()
    sid = await quiet_chat(core, manager, port)  # quiet past idle_after_s; no job has run
    assert (await manager.get(sid)).status is SessionStatus.ACTIVE
    quiet = await manager.get(sid)
    await core.handle(say("/status"), port)
    assert port.texts[-1].splitlines()[0] == status_line(
        manager, sid, "idle", quiet.last_activity_at
    )

    await quiet_for(manager, sid, manager.expire_after_s + 60)  # past expiry; still no job
    await core.handle(say("/status"), port)
    first = port.texts[-1].splitlines()[0]
    assert first == (
        f"Session #{sid} (expired; your next message starts a fresh conversation "
        "that carries a summary of this one), model claude-sonnet-4-6"
    )
    assert (await manager.get(sid)).status is SessionStatus.ACTIVE  # /status changed nothing
    await core.handle(say("hello again", message_id="2"), port)
    assert port.texts[-2].startswith("It's been a while, so this is a fresh conversation")
