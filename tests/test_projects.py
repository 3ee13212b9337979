"""Projects through the conversation core: the /project commands, Claude Code turns with
the real CLI (bundled in claude-agent-sdk) against the fake Messages API, approvals in
chat, sessions shared by chats on different platforms, resume after a restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Connection, select, update

from agents.claude_code import ClaudeCodeAgent
from agents.offline import OfflineAgent
from agents.settings import ClaudeCodeSettings, SpendSettings
from bots.app import Palaver
from bots.redaction import Redactor
from conversation.access import Actor
from conversation.code_turn import LOST
from conversation.dispatcher import Dispatcher
from conversation.inbound import Inbound
from conversation.outbound import ReplyStream
from conversation.settings import AccessSettings
from memory.code_sessions import CodeSessionStatus
from memory.manager import SessionManager
from memory.transcripts import transcripts
from memory.types import ChatKey, Role, Usage
from tests.conftest import ManagerFactory
from tests.core import RecordingPort, RecordingStream, group_port, make_dispatcher
from tests.fakes.anthropic_api import FakeAnthropic, ToolCall
from tests.test_claude_code import API_KEY, SECRETS, cli_children, tool_results, user_text

JSON = dict[str, Any]
TG = ChatKey("telegram", "11")
DC = ChatKey("discord", "900", "901")  # a thread
ANN = Actor("telegram", "11", "Ann")  # an admin
BOB = Actor("discord", "22", "Bob")
EVE = Actor("telegram", "66", "Eve")  # a stranger
ACCESS = AccessSettings(allowed_users=["telegram:11", "discord:22"], admins=["telegram:11"])

Core = Callable[..., Dispatcher]


def echo(body: JSON) -> str:
    return f"Echo: {user_text(body['messages'][-1])}"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("ANTHROPIC_", "CLAUDE")):
            monkeypatch.delenv(name)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture
async def fake(env: None) -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=API_KEY, responder=echo) as server:
        yield server


@pytest.fixture
async def manager(make_manager: ManagerFactory) -> SessionManager:
    """The default budgets: Claude Code's own prompt alone is ~20,000 tokens."""
    return await make_manager(token_limit=100_000, max_message_tokens=32_000)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "projects"
    path.mkdir()
    (path / "existing").mkdir()
    return path


@pytest.fixture
async def make_core(
    manager: SessionManager, fake: FakeAnthropic, root: Path, tmp_path: Path
) -> AsyncIterator[Core]:
    """A core with a Claude Code agent of its own (a restart makes another)."""
    made: list[Dispatcher] = []

    def make(**options: Any) -> Dispatcher:
        agent = ClaudeCodeAgent(
            ClaudeCodeSettings(),
            config_dir=tmp_path / f"claude-config-{len(made)}",
            projects_root=root,
            transcripts=manager.transcripts,
            api_key=API_KEY,
            base_url=fake.url,
            cli_env={"CLAUDE_CODE_MAX_RETRIES": "2"},
        )
        core = make_dispatcher(
            manager,
            OfflineAgent(),
            access=ACCESS,
            exports=tmp_path / "exports",
            code_agent=agent,
            projects_root=root,
            **options,
        )
        made.append(core)
        return core

    yield make
    for core in made:
        assert core.turn.code is not None
        await core.turn.code.close()


@pytest.fixture
def core(make_core: Core) -> Dispatcher:
    return make_core()


async def say(
    core: Dispatcher,
    text: str,
    *,
    actor: Actor = ANN,
    key: ChatKey = TG,
    port: RecordingPort | None = None,
    message_id: str | None = None,
) -> RecordingPort:
    port = port or (RecordingPort() if key == TG else group_port())
    await core.handle(Inbound(key, actor, text, message_id, private=key == TG), port)
    return port


async def ask(core: Dispatcher, text: str, message_id: str, **kw: Any) -> str:
    """A message in the project: Claude Code's answer."""
    port = await say(core, text, message_id=message_id, **kw)
    return port.texts[-1]


# -- the commands --------------------------------------------------------------------------


async def test_admins_create_projects_and_chats_work_in_them(
    core: Dispatcher, root: Path, fake: FakeAnthropic
) -> None:
    refused = await say(core, "/project new app", actor=BOB, key=DC)
    assert refused.texts == ["Only the bot's admins can create or change projects."]
    created = await say(core, "/project new app")
    assert created.texts[0].startswith(f"Created project app: Claude Code in {root / 'app'}")
    assert (root / "app").is_dir()
    assert (await say(core, "/project")).texts[0] == (
        "This chat works in project app (Claude Code).\n"
        "Claude Code: no session yet; the next message starts one."
    )
    assert await ask(core, "hello Claude Code", "1") == "Echo: hello Claude Code"
    shown = (await say(core, "/project")).texts[0]
    assert "Claude Code session " in shown and ": 1 turns" in shown
    listing = (await say(core, "/project list")).texts[0]
    assert listing == "Projects:\n- app: Claude Code (this chat)"
    info = (await say(core, "/project info")).texts[0]
    assert "kind: claude_code" in info and "dir: app" in info and "mode: default" in info
    history = (await say(core, "/project history")).texts[0]
    assert "(current)" in history and "1 turns" in history and "telegram:11:" in history
    # The reply is in Palaver's memory too, with its cost in the ledger.
    assert fake.requests, "the CLI called the (fake) Messages API"
    await say(core, "/project off")
    assert (await say(core, "/project")).texts[0].startswith("No project: this chat has")


async def test_bad_project_commands_get_clear_answers(core: Dispatcher, root: Path) -> None:
    outside = root.parent / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    answers = {
        "/project new app": "Created project app",
        "/project new app existing": "That didn't work: a project named 'app' already exists.",
        "/project new x ../outside": "is outside the projects root",
        "/project new y escape": "is outside the projects root",
        "/project new z missing": "The directory missing does not exist",
        "/project new bad/name": "Usage: /project new NAME [DIR]",
        "/project use nope": "there is no project 'nope' (see /project list)",
        "/project set mode bogus": "mode must be one of acceptEdits, bypassPermissions",
        "/project set tokens 5": "tokens must be from 1000 to 2e+06, not 5",
        "/project set budget lots": "budget must be a number from 0 to 1000",
        "/project set colour red": "Usage: /project set KEY VALUE",
        "/project frobnicate": "Unknown /project frobnicate.",
    }
    for command, expected in answers.items():
        said = (await say(core, command)).texts[0]
        assert expected in said, (command, said)
    await say(core, "/project use app", actor=BOB, key=DC)
    refused = await say(core, "/project set model claude-x", actor=BOB, key=DC)
    assert refused.texts == ["Only the bot's admins can create or change projects."]
    stranger = await say(core, "/project new evil", actor=EVE)
    assert "Your telegram user id is 66" in stranger.texts[0]


async def test_settings_changed_in_chat_reach_the_next_turn(
    core: Dispatcher, fake: FakeAnthropic
) -> None:
    await say(core, "/project new app existing")
    await say(core, "/project set model claude-haiku-4-5")
    await say(core, "/project set prompt Always answer in French.")
    assert (await say(core, "/project set tools Bash(ls:*), Bash(pytest:*)")).texts == [
        "Project app: tools set."
    ]
    await ask(core, "bonjour", "1")
    body = fake.requests[-1]
    assert body["model"] == "claude-haiku-4-5"
    assert "Always answer in French." in json.dumps(body["system"])
    info = (await say(core, "/project info")).texts[0]
    assert "tools: Bash(ls:*), Bash(pytest:*)" in info and "dir: existing" in info


# -- approvals -----------------------------------------------------------------------------


def write_then_answer(path: Path) -> Callable[[JSON], str | ToolCall]:
    def respond(body: JSON) -> str | ToolCall:
        if tool_results(body):
            return "Done with the file."
        return ToolCall("Write", {"file_path": str(path), "content": "hello\n"}, text="Writing.")

    return respond


async def press_when_offered(
    core: Dispatcher, port: RecordingPort, choice: str, *, actor: Actor = ANN, key: ChatKey = TG
) -> list[str]:
    """Wait for the buttons, press ``choice`` (as ``actor``); what each press said."""
    async with asyncio.timeout(20):
        while not port.offers:
            await port.delivered.wait()
            port.delivered.clear()
    _text, choices = port.offers[-1]
    data = dict(choices)[choice]
    said = []
    if actor != ANN:
        said.append(core.choose(key, actor, data))
    said.append(core.choose(key, ANN, data))
    return said


async def test_a_tool_is_run_only_once_a_person_of_the_chat_approves(
    core: Dispatcher, fake: FakeAnthropic, root: Path
) -> None:
    await say(core, "/project new app")
    target = root / "app" / "notes.txt"
    fake.responder = write_then_answer(target)
    port = RecordingPort()
    turn = asyncio.create_task(say(core, "write the notes", message_id="1", port=port))
    said = await press_when_offered(core, port, "Approve", actor=EVE)
    assert said == ["Only people allowed to use this bot here may answer.", "Approved by Ann."]
    await turn
    assert port.offers[0][0] == "Claude Code wants to use Write in app:\nWriting notes.txt"
    assert target.read_text() == "hello\n"
    assert port.texts[-1] == "Writing.\n\nDone with the file."
    assert any("Writing notes.txt" in update for s in port.streams for update in s.updates)
    assert core.choose(TG, ANN, port.offers[0][1][0][1]) == (
        "This request is no longer waiting for an answer."
    )


async def test_a_denied_or_unanswered_tool_is_not_run(
    make_core: Core, fake: FakeAnthropic, root: Path
) -> None:
    core = make_core(approval_timeout_s=1.0)
    await say(core, "/project new app")
    target = root / "app" / "notes.txt"
    fake.responder = write_then_answer(target)
    port = RecordingPort()
    turn = asyncio.create_task(say(core, "write the notes", message_id="1", port=port))
    assert await press_when_offered(core, port, "Deny") == ["Denied by Ann."]
    await turn
    assert not target.exists()
    denied = tool_results(fake.requests[-1])
    assert denied and denied[0].get("is_error") is True
    quiet = await say(core, "try again", message_id="2")
    assert "No answer within 1 s: Write was denied." in quiet.texts
    assert not target.exists()


# -- sessions ------------------------------------------------------------------------------


async def test_a_project_continues_from_another_platform_and_after_a_restart(
    make_core: Core, fake: FakeAnthropic, manager: SessionManager
) -> None:
    core = make_core()
    await say(core, "/project new app")
    await say(core, "/project use app", actor=BOB, key=DC)
    assert await ask(core, "the code word is heron", "1") == "Echo: the code word is heron"
    assert await ask(core, "what was the code word?", "2", actor=BOB, key=DC) == (
        "Echo: what was the code word?"
    )
    assert "the code word is heron" in json.dumps(fake.requests[-1]["messages"])
    history = (await say(core, "/project history")).texts[0]
    assert "telegram:11:" in history and "discord:900:901" in history and "2 turns" in history

    restarted = make_core()  # a new process: no live CLI, the session resumes from the DB
    assert await ask(restarted, "and now?", "3") == "Echo: and now?"
    transcript = json.dumps(fake.requests[-1]["messages"])
    assert "the code word is heron" in transcript and "what was the code word?" in transcript
    session = await manager.find_by_chat(TG)
    assert session is not None and session.scope == "project"
    texts = [(m.role, m.text) for m in await manager.messages(session.id)]
    assert texts[-2:] == [(Role.USER, "and now?"), (Role.ASSISTANT, "Echo: and now?")]
    assert session.usage.cost_usd > 0  # the ledger has Claude Code's usage


async def test_project_reset_starts_a_fresh_claude_code_session(
    core: Dispatcher, fake: FakeAnthropic
) -> None:
    await say(core, "/project new app")
    await ask(core, "remember the number 4417", "1")
    said = (await say(core, "/project reset")).texts[0]
    assert said.startswith("The next message starts a fresh Claude Code session in app.")
    await ask(core, "which number?", "2")
    assert "4417" not in json.dumps(fake.requests[-1]["messages"])
    history = (await say(core, "/project history")).texts[0]
    assert "(current)" in history and "(retired)" in history


async def test_a_session_of_another_project_is_never_resumed(
    core: Dispatcher, fake: FakeAnthropic, manager: SessionManager
) -> None:
    """Two projects in one directory: project b's current row naming project a's
    Claude Code session (written by mistake, copied or forged) must not let b continue
    a's conversation. b starts fresh, seeded with its own memory, and says so once."""
    await say(core, "/project new a existing")
    await ask(core, "the code word is heron", "1")
    a = await manager.project(name="a")
    a_session = await manager.code_session(a.id)
    assert a_session is not None
    await say(core, "/project new b existing")
    b = await manager.project(name="b")
    await manager.record_code_turn(
        b.id,
        a_session.session_id,
        chat=TG,
        usage=Usage(),
        num_turns=0,
        context_tokens=0,
        lost=None,
    )
    answer = await ask(core, "what was the code word?", "2")
    assert answer.startswith(f"{LOST}\n\nEcho: [Palaver: the earlier Claude Code session")
    assert answer.endswith("[The user's message follows.]\n\nwhat was the code word?")
    assert "heron" not in json.dumps(fake.requests[-1]["messages"])
    b_session = await manager.code_session(b.id)
    assert b_session is not None and b_session.session_id != a_session.session_id
    statuses = {s.session_id: s.status for s in await manager.code_history(b.id)}
    assert statuses[a_session.session_id] is CodeSessionStatus.LOST
    # a's own session is untouched and a resumes it.
    await say(core, "/project use a")
    assert (await manager.code_session(a.id)) == a_session
    assert await ask(core, "and the word?", "3") == "Echo: and the word?"
    assert "heron" in json.dumps(fake.requests[-1]["messages"])
    await say(core, "/project use b")
    assert await ask(core, "again", "4") == "Echo: again"  # b's LOST is said once


async def test_a_corrupt_transcript_starts_a_fresh_seeded_session_and_says_so_once(
    make_core: Core, fake: FakeAnthropic, manager: SessionManager
) -> None:
    """The stored transcript of the project's session garbled (every line cut short):
    after a restart the resume cannot work; the chat is told once, in plain words, and
    the project goes on in a fresh session seeded with Palaver's memory of it."""
    core = make_core()
    await say(core, "/project new app")
    await ask(core, "the code word is heron", "1")
    app = await manager.project(name="app")
    before = await manager.code_session(app.id)
    assert before is not None

    def garble(conn: Connection) -> int:
        rows = conn.execute(
            select(transcripts.c.id, transcripts.c.entry).where(
                transcripts.c.session_id == before.session_id
            )
        ).all()
        for row_id, entry in rows:
            cut = json.dumps(entry)[: len(json.dumps(entry)) // 2]  # truncated JSON text
            conn.execute(update(transcripts).where(transcripts.c.id == row_id).values(entry=cut))
        return len(rows)

    assert await manager.store.db.run_write(garble) > 0
    restarted = make_core()  # no live CLI and another config dir: only the database has it
    port = await say(restarted, "what was the code word?", message_id="2")
    assert port.texts[0].startswith(f"{LOST}\n\nEcho: [Palaver: the earlier Claude Code")
    assert "the code word is heron" in port.texts[0]  # the seed: Palaver's own memory
    after = await manager.code_session(app.id)
    assert after is not None and after.session_id != before.session_id
    statuses = {s.session_id: s.status for s in await manager.code_history(app.id)}
    assert statuses == {
        before.session_id: CodeSessionStatus.LOST,
        after.session_id: CodeSessionStatus.CURRENT,
    }
    history = (await say(restarted, "/project history")).texts[0]
    assert "(lost)" in history and "(current)" in history
    assert await ask(restarted, "and now?", "3") == "Echo: and now?"  # told once
    assert "the code word is heron" in json.dumps(fake.requests[-1]["messages"])
    # The garbled lines are kept as they are; an export still includes them.
    exported = await say(restarted, "/export json")
    document = json.loads(exported.sent[-1].data or b"")
    assert set(document["claude_code"]) == {before.session_id, after.session_id}
    assert document["claude_code"][before.session_id][0]["type"] == "unreadable"
    markdown = await say(restarted, "/export")
    text = (markdown.sent[-1].data or b"").decode()
    assert f"### Session {before.session_id}" in text and "and now?" in text


@dataclass
class BegunStream(RecordingStream):
    begun: asyncio.Event = field(default_factory=asyncio.Event)

    async def update(self, text: str) -> None:
        await super().update(text)
        self.begun.set()


@dataclass
class BegunPort(RecordingPort):
    """A port that says when a streamed answer has begun."""

    begun: asyncio.Event = field(default_factory=asyncio.Event)

    def stream(self) -> ReplyStream:
        stream = BegunStream(self, begun=self.begun)
        self.streams.append(stream)
        return stream


async def test_claude_code_killed_mid_turn_is_a_plain_error_and_the_next_turn_works(
    core: Dispatcher, fake: FakeAnthropic, manager: SessionManager
) -> None:
    """The CLI process dies (killed) while the model's answer stalls mid-stream: the
    chat gets plain words, the error is recorded, nothing waits on the dead process,
    and the next message is answered."""
    await say(core, "/project new app")
    await ask(core, "the code word is heron", "1")
    [cli] = cli_children()  # the live CLI of the project
    fake.words_per_chunk = 1
    fake.fail_mid_stream(after_chunks=1, how="stall", seconds=600)
    port = BegunPort()
    turn = asyncio.create_task(say(core, "tell me a long story", message_id="2", port=port))
    await port.begun.wait()  # the answer has begun streaming; the model stalls
    os.kill(cli, signal.SIGKILL)
    await asyncio.wait_for(turn, 60)  # a bound only against a hang; it ends at once
    [said] = port.texts  # what streamed so far, then plain words, once
    assert said.endswith(
        "Claude Code stopped unexpectedly during this turn; what it did so far is kept. "
        "Send your message again to continue."
    )
    assert cli_children() == []  # the dead CLI was let go; no other took its place
    session = await manager.find_by_chat(TG)
    assert session is not None and session.errors == 1
    fake.words_per_chunk = 3
    assert await ask(core, "what was the code word?", "3") == "Echo: what was the code word?"
    assert "the code word is heron" in json.dumps(fake.requests[-1]["messages"])


async def test_a_turn_cut_off_by_a_crash_still_counts_what_its_model_calls_cost(
    core: Dispatcher, fake: FakeAnthropic, manager: SessionManager, root: Path
) -> None:
    """Claude Code read a file (one model call, paid), then its CLI died while the
    next call was pending: the paid call is charged to the session and the asker, as
    a budget stop's is, so a CLI that keeps dying cannot spend past the caps."""
    await say(core, "/project new app")
    (root / "app" / "notes.md").write_text("the plan")
    await ask(core, "hello", "1")
    [cli] = cli_children()
    session = await manager.find_by_chat(TG)
    assert session is not None
    before = session.usage.cost_usd
    spent_before = await manager.spent_today("telegram:11")
    pending = asyncio.Event()

    async def respond(body: dict[str, Any]) -> str | ToolCall:
        if tool_results(body):
            pending.set()
            await asyncio.sleep(600)  # the second call never answers: the CLI dies first
        return ToolCall("Read", {"file_path": str(root / "app" / "notes.md")})

    fake.responder = respond
    turn = asyncio.create_task(say(core, "read the notes", message_id="2"))
    await asyncio.wait_for(pending.wait(), 60)
    os.kill(cli, signal.SIGKILL)
    await asyncio.wait_for(turn, 60)  # a bound only against a hang
    session = await manager.find_by_chat(TG)
    assert session is not None and session.errors == 1
    assert session.usage.cost_usd > before  # the Read call's tokens, charged
    assert await manager.spent_today("telegram:11") > spent_before  # to the asker too


async def test_claude_code_turns_count_toward_spend_caps_status_and_stats(
    make_core: Core, fake: FakeAnthropic, manager: SessionManager
) -> None:
    """A project turn's cost (Claude Code's own figure) is in the ledger like any
    turn's: /status and /stats show it, and the session's and the user's daily caps
    refuse the next turn without starting Claude Code."""
    capped = make_core(spend=SpendSettings(user_daily_usd=0, session_usd=0.001))
    await say(capped, "/project new app")
    await say(capped, "/project use app", actor=BOB, key=DC)
    assert await ask(capped, "first", "1") == "Echo: first"
    session = await manager.find_by_chat(TG)
    assert session is not None and session.usage.cost_usd > 0.001
    app = await manager.project(name="app")
    [code] = await manager.code_history(app.id)
    assert session.usage.cost_usd == pytest.approx(code.usage.cost_usd)
    status = (await say(capped, "/status")).texts[0]
    assert f"Cost: ${session.usage.cost_usd:.4f}" in status
    written = session.usage.cache_write_tokens  # Claude Code's prompt, cached
    assert written > 0 and f"{written:,} cache write" in status
    stats = (await say(capped, "/stats")).texts[0]
    assert f"Cost: ${session.usage.cost_usd:.4f}" in stats

    calls = len(fake.requests)
    refused = await say(capped, "second", message_id="2", actor=BOB, key=DC)
    assert refused.texts == [
        "This conversation has reached its spending limit ($0.00). Send /reset to start a new one."
    ]
    assert len(fake.requests) == calls  # Claude Code was not asked

    # The user's daily cap: Ann's project turn counts toward her day, not Bob's.
    daily = make_core(spend=SpendSettings(user_daily_usd=0.001, session_usd=0))
    refused = await say(daily, "third", message_id="3")
    assert refused.texts == [
        "You've reached today's spending limit ($0.00). It resets at midnight UTC."
    ]
    assert len(fake.requests) == calls
    assert await ask(daily, "fourth", "4", actor=BOB, key=DC) == "Echo: fourth"
    assert await manager.spent_today("discord:22") > 0


async def test_a_turn_stopped_at_its_budget_still_counts_what_it_spent(
    make_core: Core, fake: FakeAnthropic, manager: SessionManager, root: Path
) -> None:
    """Claude Code is stopped once a turn passes the project's budget: the money spent
    until then is charged to the asker like any failed call's, so the caps see it."""
    core = make_core(spend=SpendSettings(user_daily_usd=0.01, session_usd=0))
    await say(core, "/project new app")
    await say(core, "/project set budget 0.01")
    fake.responder = write_then_answer(root / "app" / "spent.txt")
    port = await say(core, "spend it", message_id="1")
    assert "This turn hit the project's budget of $0.01 and was stopped" in port.texts[-1]
    session = await manager.find_by_chat(TG)
    assert session is not None and session.errors == 1
    assert session.usage.cost_usd > 0.01
    assert await manager.spent_today("telegram:11") == pytest.approx(session.usage.cost_usd)
    calls = len(fake.requests)
    refused = await say(core, "again", message_id="2")
    assert refused.texts == [
        "You've reached today's spending limit ($0.01). It resets at midnight UTC."
    ]
    assert len(fake.requests) == calls


async def test_an_export_of_a_project_includes_its_claude_code_transcript(
    core: Dispatcher,
) -> None:
    await say(core, "/project new app")
    await ask(core, "note this down", "1")
    exported = await say(core, "/export json")
    document = json.loads(exported.sent[-1].data or b"")
    [(session_id, lines)] = document["claude_code"].items()
    assert any("note this down" in json.dumps(line) for line in lines)
    markdown = await say(core, "/export")
    text = (markdown.sent[-1].data or b"").decode()
    assert f"### Session {session_id}" in text and "note this down" in text


async def test_a_chat_project_shares_one_conversation_without_claude_code(
    core: Dispatcher, manager: SessionManager
) -> None:
    await say(core, "/project new notes")
    await say(core, "/project set kind chat")
    await say(core, "/project use notes", actor=BOB, key=DC)
    await say(core, "first from telegram", message_id="1")
    await say(core, "then from discord", actor=BOB, key=DC, message_id="2")
    tg, dc = await manager.find_by_chat(TG), await manager.find_by_chat(DC)
    assert tg is not None and dc is not None and tg.id == dc.id
    texts = [m.text for m in await manager.messages(tg.id) if m.role is Role.USER]
    assert texts == ["first from telegram", "then from discord"]


async def test_past_the_threshold_claude_codes_context_is_compacted_and_kept_in_memory(
    make_manager: ManagerFactory,
    fake: FakeAnthropic,
    root: Path,
    tmp_path: Path,
) -> None:
    # Claude Code's own prompt is about 20,000 tokens: 70% of 20,000 is passed at once.
    manager = await make_manager(token_limit=20_000, max_message_tokens=8000)
    agent = ClaudeCodeAgent(
        ClaudeCodeSettings(),
        config_dir=tmp_path / "claude-config",
        projects_root=root,
        transcripts=manager.transcripts,
        api_key=API_KEY,
        base_url=fake.url,
    )
    core = make_dispatcher(
        manager, OfflineAgent(), access=ACCESS, exports=tmp_path, code_agent=agent,
        projects_root=root,
    )  # fmt: skip
    try:
        await say(core, "/project new app")
        await ask(core, "the plan is to ship on Friday", "1")
        assert core.turn.code is not None
        await core.turn.code.idle()
        session = await manager.find_by_chat(TG)
        assert session is not None
        notes = [m for m in await manager.messages(session.id) if m.role is Role.SYSTEM]
        assert len(notes) == 1 and notes[0].text.startswith(
            "Claude Code compacted this project's context. Its summary:"
        )
        await ask(core, "and the plan?", "2")
        await core.turn.code.idle()
        again = [m for m in await manager.messages(session.id) if m.role is Role.SYSTEM]
        assert len(again) == 1, "not every turn: at most once per few turns"
    finally:
        assert core.turn.code is not None
        await core.turn.code.close()


# -- through Telegram's and Discord's real buttons -----------------------------------------


async def test_approve_through_telegrams_inline_buttons(
    tmp_path: Path, fake: FakeAnthropic, root: Path, sqlite_url: str
) -> None:
    from tests.fakes.telegram_api import FakeTelegram
    from tests.test_telegram_bot import ADMIN, TOKEN, make_config, texts, until

    target = root / "app" / "notes.txt"
    async with FakeTelegram(token=TOKEN) as tg:
        config = make_config(tmp_path, sqlite_url, tg, fake)
        config.projects.root = str(root)
        app = Palaver(config)
        await app.start()
        (interface,) = app.build_interfaces()
        await interface.start()
        try:
            tg.user_message(ADMIN, "/project new app")
            await tg.wait_for_message(ADMIN, contains="Created project app")
            fake.responder = write_then_answer(target)
            tg.user_message(ADMIN, "write the notes")
            asked = await tg.wait_for_message(
                ADMIN, contains="Claude Code wants to use Write", timeout=30
            )
            buttons = asked["reply_markup"]["inline_keyboard"][0]
            assert [b["text"] for b in buttons] == ["Approve", "Deny"]
            tg.callback_query(ADMIN, asked["message_id"], buttons[0]["callback_data"])
            await tg.wait_for_message(ADMIN, contains="Done with the file.", timeout=30)
            assert target.read_text() == "hello\n"
            answered = tg.calls("answerCallbackQuery")
            assert answered and answered[-1]["text"].startswith("Approved by")

            def shown() -> JSON:
                message = tg.message(ADMIN, asked["message_id"])
                assert message is not None
                return message

            await until(lambda: "Approved by" in shown()["text"])
            assert "reply_markup" not in shown()
            assert any(t.endswith("Done with the file.") for t in texts(tg, ADMIN))
        finally:
            await app.close_interfaces([interface], 5.0)
            await app.stop()


async def test_a_telegram_forum_topic_is_bound_to_its_project(
    tmp_path: Path, fake: FakeAnthropic, sqlite_url: str
) -> None:
    """In a forum, each topic is a chat of its own: the topic that selects a project
    works in it (Claude Code, answered in that topic); the topic next to it keeps its
    own conversation, and neither sees the other's words."""
    from tests.fakes.telegram_api import FakeTelegram
    from tests.test_telegram_bot import ADMIN, TOKEN, make_config, texts

    forum = -1005

    def post(text: str, topic: int) -> None:
        tg.user_message(forum, text, chat_type="supergroup", user_id=ADMIN, message_thread_id=topic)

    async with FakeTelegram(token=TOKEN) as tg:
        config = make_config(tmp_path, sqlite_url, tg, fake)
        config.projects.root = str(tmp_path / "projects")
        app = Palaver(config)
        await app.start()
        (interface,) = app.build_interfaces()
        await interface.start()
        try:
            post("/project new app", 7)
            await tg.wait_for_message(forum, message_thread_id=7, contains="Created project app")
            post("@palaver_test_bot the fruit is a quince", 8)
            await tg.wait_for_message(forum, message_thread_id=8, contains="quince")
            post("@palaver_test_bot the code word is heron", 7)
            await tg.wait_for_message(forum, message_thread_id=7, contains="heron", timeout=30)
            code_call = json.dumps(fake.requests[-1])
            assert "heron" in code_call and "quince" not in code_call
            assert "claude_code" in code_call or "Claude Code" in code_call  # its own prompt
            post("/project", 8)
            await tg.wait_for_message(forum, message_thread_id=8, contains="No project")
            post("@palaver_test_bot what was the code word?", 7)
            await tg.wait_for_message(forum, message_thread_id=7, contains="code word?", timeout=30)
            assert "the code word is heron" in json.dumps(fake.requests[-1]["messages"])
            manager = app.manager
            topic = ChatKey("telegram", str(forum), "7")
            project = await manager.active_project(topic)
            assert project is not None and project.name == "app"
            assert await manager.active_project(ChatKey("telegram", str(forum), "8")) is None
            current = await manager.code_session(project.id)
            assert current is not None and current.chat_refs == (topic.ref,)
            assert not any("heron" in t for t in texts(tg, forum, 8))
            assert not any("quince" in t for t in texts(tg, forum, 7))
        finally:
            await app.close_interfaces([interface], 5.0)
            await app.stop()


async def test_started_on_telegram_continued_in_a_discord_thread_with_its_buttons(
    tmp_path: Path,
    fake: FakeAnthropic,
    root: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bots.discord_bot as discord_bot
    from agents.settings import ClaudeSettings
    from bots.config import (
        Config,
        DiscordSettings,
        PalaverSettings,
        Secrets,
        TelegramSettings,
    )
    from memory.settings import DatabaseSettings
    from tests.fakes.discord_api import FakeDiscord
    from tests.fakes.telegram_api import FakeTelegram

    monkeypatch.setattr(discord_bot, "GUILD_READY_TIMEOUT_S", 0.05)
    admin, alice = 4242, 7_100_000_000_000_000_001
    guild, channel, thread = (
        4_100_000_000_000_000_001,
        4_100_000_000_000_000_002,
        4_100_000_000_000_000_009,
    )
    target = root / "app" / "notes.txt"
    async with FakeTelegram(token="123:ABC") as tg, FakeDiscord(token="dc-token") as dc:
        dc.add_guild(guild, "HQ", channels=[(channel, "general")], members=[(alice, "alice")])
        dc.add_thread(thread, channel, "app work")
        with dc.patch_discord():
            config = Config(
                palaver=PalaverSettings(data_dir=tmp_path / "data"),
                database=DatabaseSettings(url=sqlite_url),
                access=AccessSettings(
                    allowed_users=[f"telegram:{admin}", f"discord:{alice}"],
                    admins=[f"telegram:{admin}"],
                ),
                claude=ClaudeSettings(base_url=fake.url, max_retries=0),
                telegram=TelegramSettings(base_url=tg.base_url, base_file_url=tg.base_file_url),
                discord=DiscordSettings(stream_edit_interval_s=0.2),
                secrets=Secrets(
                    telegram_bot_token=SecretStr("123:ABC"),
                    discord_bot_token=SecretStr("dc-token"),
                    anthropic_api_key=SecretStr(API_KEY),
                ),
            )
            config.projects.root = str(root)
            app = Palaver(config)
            await app.start()
            interfaces = app.build_interfaces()
            try:
                for interface in interfaces:
                    await interface.start()
                tg.user_message(admin, "/project new app")
                await tg.wait_for_message(admin, contains="Created project app")
                tg.user_message(admin, "the release is called Heron")
                await tg.wait_for_message(
                    admin, contains="Echo: the release is called Heron", timeout=30
                )

                used = await dc.slash_command(
                    "project", {"use": {"name": "app"}}, channel_id=thread, author_id=alice
                )
                record = dc.interaction_responses(used["id"])
                await dc.wait_for(lambda: record.followups)
                assert "works in project app" in record.followups[0].content

                fake.responder = write_then_answer(target)
                await dc.user_message(thread, "write the notes", author_id=alice, mentions_bot=True)

                def offered() -> Any:
                    found = [m for m in dc.channel_messages(thread) if m.components]
                    return found[-1] if found else None

                asked = await dc.wait_for(offered, timeout=30)
                assert asked.content.startswith("Claude Code wants to use Write in app")
                buttons = asked.components[0]["components"]
                assert [b["label"] for b in buttons] == ["Approve", "Deny"]
                await dc.press_button(asked.id, buttons[1]["custom_id"], author_id=alice)
                await dc.wait_for(lambda: "Denied by alice" in dc.messages[asked.id].content)
                assert dc.messages[asked.id].components == []
                await dc.wait_for(
                    lambda: any(
                        m.content.endswith("Done with the file.")
                        for m in dc.channel_messages(thread)
                    ),
                    timeout=30,
                )
                assert not target.exists()
                # The Claude Code session is the one Telegram started.
                assert "the release is called Heron" in json.dumps(fake.requests[-1]["messages"])
            finally:
                await app.close_interfaces(interfaces, 5.0)
                await app.stop()


async def test_a_photo_in_a_project_chat_is_put_in_its_uploads_folder(
    core: Dispatcher, fake: FakeAnthropic, root: Path
) -> None:
    from conversation.inbound import Attachment
    from tests.media import png

    data = png(64, 48)

    async def fetch() -> bytes:
        return data

    await say(core, "/project new app")
    photo = Attachment("../../whiteboard.png", "photo", "image/png", len(data), fetch)
    port = RecordingPort()
    await core.handle(
        Inbound(TG, ANN, "what is on the whiteboard?", "1", attachments=(photo,)), port
    )
    [saved] = (root / "app" / "uploads").iterdir()  # a safe name, never a path
    assert saved.read_bytes() == data
    prompt = user_text(fake.requests[-1]["messages"][-1])
    assert "what is on the whiteboard?" in prompt
    assert f"[The user sent files, saved in the project as: uploads/{saved.name}]" in prompt
    assert port.texts[-1].startswith("Echo: what is on the whiteboard?")


async def test_a_secret_claude_code_repeats_never_reaches_the_chat(
    make_core: Core, fake: FakeAnthropic, manager: SessionManager
) -> None:
    """Claude Code's CLI holds the API key in its environment, so a tool can show it
    to the model; whatever the model then says, the chat and the memory get the
    secret's name, never its value, in the streamed text as in the stored reply."""
    redactor = Redactor({"ANTHROPIC_API_KEY": API_KEY, **SECRETS})
    core = make_core(redact=redactor.redact)
    await say(core, "/project new app existing")
    fake.responder = lambda body: f"Your environment has ANTHROPIC_API_KEY={API_KEY} set."
    port = await say(core, "what is in env?", message_id="1")
    shown = [*port.texts, *(update for stream in port.streams for update in stream.updates)]
    assert len(shown) > 1 and all(API_KEY not in text for text in shown), shown
    assert port.texts[-1] == "Your environment has ANTHROPIC_API_KEY=[ANTHROPIC_API_KEY] set."
    session = await manager.find_by_chat(TG)
    assert session is not None
    stored = [m.text for m in await manager.messages(session.id)]
    assert all(API_KEY not in text for text in stored), stored
