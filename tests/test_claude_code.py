"""The Claude Code agent with the real CLI (bundled in claude-agent-sdk) against the fake
Messages API: sessions, resume, approvals, errors, budgets and the pool of live CLIs.

The CLI runs offline: ANTHROPIC_BASE_URL points at the fake, HOME and CLAUDE_CONFIG_DIR
are temporary, and the parent environment is scrubbed of ANTHROPIC_*/CLAUDE_* (the SDK
passes it on). Fake secrets are put in the environment to prove they never reach the CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from agents.base import AgentError, TextDelta
from agents.claude_code import (
    DENIED,
    ClaudeCodeAgent,
    CodeEvent,
    CodeReply,
    CodeRequest,
    ToolApproval,
    ToolProgress,
)
from agents.settings import ClaudeCodeSettings
from memory.database import Database, migrate, open_database
from memory.settings import DatabaseSettings
from memory.transcripts import TranscriptStore
from tests.fakes.anthropic_api import FakeAnthropic, ToolCall

SECRETS = {
    "TELEGRAM_BOT_TOKEN": "tg-secret-4242",
    "DISCORD_BOT_TOKEN": "dc-secret-4343",
    "PALAVER_ADMIN_TOKEN": "admin-secret-4444",
    "DATABASE_PASSWORD": "db-secret-4545",
}
API_KEY = "test-key"
MODEL = "claude-sonnet-4-6"

JSON = dict[str, Any]


def user_text(message: JSON) -> str:
    """The text a user message carries, without Claude Code's system reminders."""
    content = message["content"]
    if isinstance(content, str):
        return content
    parts = [
        b.get("text", "")
        for b in content
        if b.get("type") == "text"
        and not b.get("text", "").lstrip().startswith("<system-reminder>")
    ]
    return "\n".join(parts)


def tool_results(body: JSON) -> list[JSON]:
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return []
    return [b for b in content if b.get("type") == "tool_result"]


def echo(body: JSON) -> str:
    return f"Echo: {user_text(body['messages'][-1])}"


def transcript_of(body: JSON) -> str:
    return json.dumps(body["messages"])


def cli_children() -> list[int]:
    """Pids of the Claude Code CLIs this test process started."""
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and argv and argv[0].endswith(b"claude"):
            pids.append(int(entry))
    return pids


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith(("ANTHROPIC_", "CLAUDE")):
            monkeypatch.delenv(name)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
async def fake(env: Path) -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=API_KEY, responder=echo) as server:
        yield server


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "projects"
    for name in ("app", "web", "lib"):
        (path / name).mkdir(parents=True)
    return path


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = open_database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", DatabaseSettings())
    await migrate(db)
    yield db
    await db.dispose()


@pytest.fixture
async def any_db(db_url: str) -> AsyncIterator[Database]:
    db = open_database(db_url, DatabaseSettings(busy_timeout_ms=10_000))
    await migrate(db)
    yield db
    await db.dispose()


AgentFactory = Callable[..., ClaudeCodeAgent]


@pytest.fixture
async def make_agent(
    fake: FakeAnthropic, root: Path, tmp_path: Path
) -> AsyncIterator[AgentFactory]:
    made: list[ClaudeCodeAgent] = []

    def make(database: Database | None, **settings: Any) -> ClaudeCodeAgent:
        agent = ClaudeCodeAgent(
            ClaudeCodeSettings(**settings),
            config_dir=tmp_path / "claude-config",
            projects_root=root,
            transcripts=TranscriptStore(database) if database is not None else None,
            api_key=API_KEY,
            base_url=fake.url,
            # Two retries: a 529 burst is over in seconds, not the CLI's default minutes.
            cli_env={"CLAUDE_CODE_MAX_RETRIES": "2"},
        )
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.close()


def request(root: Path, prompt: str, **fields: Any) -> CodeRequest:
    values: dict[str, Any] = {
        "project_id": 1,
        "project_name": "app",
        "workdir": root / "app",
        "prompt": prompt,
        "resume": None,
        "model": MODEL,
    }
    values.update(fields)
    return CodeRequest(**values)


async def approve(_: ToolApproval) -> bool:
    return True


async def run(
    agent: ClaudeCodeAgent,
    req: CodeRequest,
    approver: Callable[[ToolApproval], Awaitable[bool]] = approve,
) -> tuple[list[CodeEvent], CodeReply]:
    events: list[CodeEvent] = []
    async with aclosing(agent.stream(req, approver)) as stream:
        async for event in stream:
            events.append(event)
    assert isinstance(events[-1], CodeReply)
    assert sum(isinstance(e, CodeReply) for e in events) == 1
    return events, events[-1]


async def test_a_turn_streams_and_a_follow_up_reuses_the_live_cli(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path, sqlite_db: Database
) -> None:
    fake.words_per_chunk = 1
    agent = make_agent(sqlite_db)
    events, first = await run(agent, request(root, "alpha beta gamma"))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1 and "".join(deltas) == first.text == "Echo: alpha beta gamma"
    assert first.usage.cost_usd > 0 and first.usage.cache_write_tokens > 0
    assert first.context_tokens > first.usage.output_tokens
    assert first.lost_session is None and first.model == MODEL and first.num_turns == 1
    processes = cli_children()
    assert len(processes) == 1

    _, second = await run(agent, request(root, "delta", resume=first.session_id))
    assert second.text == "Echo: delta"
    assert second.session_id == first.session_id
    # The second call carried the first exchange, and ran in the same CLI process.
    assert "alpha beta gamma" in transcript_of(fake.requests[-1])
    assert cli_children() == processes
    # Cost is per turn, not the CLI's running total: the second one read from the cache.
    assert 0 < second.usage.cost_usd < first.usage.cost_usd
    assert second.usage.cache_read_tokens > 0


async def test_resume_after_restart_and_without_the_cli_config_dir(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path, any_db: Database, tmp_path: Path
) -> None:
    first_agent = make_agent(any_db)
    _, first = await run(first_agent, request(root, "remember the word PAPAYA"))
    await first_agent.close()
    assert cli_children() == []
    # The CLI's own files are gone (a new machine, another Palaver on the same
    # PostgreSQL): the session comes back from the database.
    shutil.rmtree(tmp_path / "claude-config")

    second_agent = make_agent(any_db)
    _, reply = await run(second_agent, request(root, "what was the word?", resume=first.session_id))
    assert reply.lost_session is None
    assert reply.session_id == first.session_id
    assert "PAPAYA" in transcript_of(fake.requests[-1])
    entries = await TranscriptStore(any_db).entries(first.session_id)
    assert any("what was the word?" in json.dumps(e) for e in entries)


async def test_a_stale_session_id_starts_a_fresh_session_seeded_with_the_summary(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path, sqlite_db: Database
) -> None:
    agent = make_agent(sqlite_db)
    stale = str(uuid.uuid4())
    req = request(
        root, "carry on", resume=stale, seed_summary="We renamed the models module to orm.py."
    )
    _, reply = await run(agent, req)
    assert reply.lost_session == stale
    assert reply.session_id != stale
    sent = user_text(fake.requests[-1]["messages"][0])
    assert "renamed the models module to orm.py" in sent and sent.endswith("carry on")
    # The fresh session is a normal one from then on.
    _, follow = await run(agent, request(root, "next", resume=reply.session_id))
    assert follow.lost_session is None and follow.session_id == reply.session_id


def write_then_answer(path: str) -> Callable[[JSON], str | ToolCall]:
    def respond(body: JSON) -> str | ToolCall:
        results = tool_results(body)
        if results:
            return "tool said: " + json.dumps(results[0].get("content"))
        return ToolCall("Write", {"file_path": path, "content": "hello\n"}, text="Writing it.")

    return respond


async def test_approve_and_deny_a_tool(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path, sqlite_db: Database
) -> None:
    target = root / "app" / "notes.txt"
    fake.responder = write_then_answer(str(target))
    agent = make_agent(sqlite_db)
    asked: list[ToolApproval] = []

    async def deny(approval: ToolApproval) -> bool:
        asked.append(approval)
        return False

    events, reply = await run(agent, request(root, "write notes"), deny)
    assert [a.tool_name for a in asked] == ["Write"]
    assert asked[0].summary == "Writing notes.txt" and asked[0].project_name == "app"
    assert asked[0].input["file_path"] == str(target)
    assert ToolProgress("Writing notes.txt") in events
    assert not target.exists()
    denied = tool_results(fake.requests[-1])
    assert denied and denied[0].get("is_error") is True
    assert "did not approve" in json.dumps(denied[0]["content"])
    assert "did not approve" in reply.text

    async def yes(approval: ToolApproval) -> bool:
        asked.append(approval)
        return True

    _, reply = await run(agent, request(root, "write notes", resume=reply.session_id), yes)
    assert len(asked) == 2
    assert target.read_text() == "hello\n"
    assert not tool_results(fake.requests[-1])[0].get("is_error")


async def test_an_approver_that_fails_denies(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path
) -> None:
    target = root / "app" / "x.txt"
    fake.responder = write_then_answer(str(target))

    async def broken(_: ToolApproval) -> bool:
        raise RuntimeError("the chat went away")

    await run(make_agent(None), request(root, "go"), broken)
    assert not target.exists()
    assert DENIED[:20] in json.dumps(tool_results(fake.requests[-1]))


async def test_reads_inside_the_project_run_without_asking_outside_they_ask(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path, tmp_path: Path
) -> None:
    inside = root / "app" / "README.md"
    inside.write_text("inside text")
    outside = tmp_path / "secret.txt"
    outside.write_text("outside text")
    reads = iter([str(inside), str(outside)])

    def respond(body: JSON) -> str | ToolCall:
        if tool_results(body):
            return "read done"
        return ToolCall("Read", {"file_path": next(reads)})

    fake.responder = respond
    agent = make_agent(None)
    asked: list[ToolApproval] = []

    async def deny(approval: ToolApproval) -> bool:
        asked.append(approval)
        return False

    events, reply = await run(agent, request(root, "read inside"), deny)
    assert asked == [] and ToolProgress("Reading README.md") in events
    assert "inside text" in json.dumps(tool_results(fake.requests[-1]))
    await run(agent, request(root, "read outside", resume=reply.session_id), deny)
    assert [a.summary for a in asked] == [f"Reading {outside}"]
    assert "outside text" not in json.dumps(tool_results(fake.requests[-1]))


async def test_secrets_never_reach_the_cli(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path
) -> None:
    def respond(body: JSON) -> str | ToolCall:
        if tool_results(body):
            return "ok"
        return ToolCall("Bash", {"command": "env", "description": "print the environment"})

    fake.responder = respond
    agent = make_agent(None)
    argv: list[bytes] = []

    async def look(_: ToolApproval) -> bool:
        argv.extend(cmdline(pid) for pid in cli_children())
        return True

    await run(agent, request(root, "show env"), look)
    printed = json.dumps(tool_results(fake.requests[-1]))
    assert "PATH=" in printed  # the command ran and its output came back
    for value in SECRETS.values():
        assert value not in printed
    assert argv and all(API_KEY.encode() not in a for a in argv)
    assert all(value.encode() not in a for a in argv for value in SECRETS.values())


async def test_a_529_burst_is_retried_and_a_longer_one_is_a_plain_error(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path
) -> None:
    agent = make_agent(None)
    fake.fail_next(529, times=2)
    _, reply = await run(agent, request(root, "hello"))
    assert reply.text == "Echo: hello"

    fake.fail_next(529, times=3)
    with pytest.raises(AgentError) as caught:
        await run(agent, request(root, "again", resume=reply.session_id))
    assert caught.value.kind == "overloaded"
    assert "overloaded" in caught.value.user_message
    # The session survives the failed turn: the next one resumes it.
    _, after = await run(agent, request(root, "third", resume=reply.session_id))
    assert after.session_id == reply.session_id and after.lost_session is None


async def test_a_bad_api_key_is_a_plain_error(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path
) -> None:
    fake.api_key = "another-key"
    with pytest.raises(AgentError) as caught:
        await run(make_agent(None), request(root, "hi"))
    assert caught.value.kind == "auth"
    assert "ANTHROPIC_API_KEY" in caught.value.user_message


async def test_a_turn_over_its_budget_is_stopped(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path, sqlite_db: Database
) -> None:
    target = root / "app" / "spent.txt"
    fake.responder = write_then_answer(str(target))
    asked: list[ToolApproval] = []

    async def note(approval: ToolApproval) -> bool:
        asked.append(approval)
        return True

    agent = make_agent(sqlite_db)
    with pytest.raises(AgentError) as caught:
        await run(agent, request(root, "spend", max_budget_usd=0.01), note)
    assert caught.value.kind == "budget"
    assert "budget of $0.01" in caught.value.user_message
    assert asked == [] and not target.exists()  # the tool after the costly call never ran


async def test_a_directory_outside_the_root_is_refused(
    make_agent: AgentFactory, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "link")
    agent = make_agent(None)
    for workdir in (tmp_path / "elsewhere", root / "link", root / ".." / "elsewhere"):
        with pytest.raises(AgentError) as caught:
            await run(agent, request(root, "hi", workdir=workdir))
        assert caught.value.kind == "workspace"
        assert "outside the projects root" in caught.value.user_message
    assert cli_children() == []


async def test_a_missing_cli_is_a_plain_error(make_agent: AgentFactory, root: Path) -> None:
    agent = make_agent(None, cli_path="/nonexistent/claude")
    with pytest.raises(AgentError) as caught:
        await run(agent, request(root, "hi"))
    assert caught.value.kind == "cli_missing"
    assert "not found" in caught.value.user_message
    assert "exit" not in caught.value.user_message


async def test_no_more_live_clis_than_max_live(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path
) -> None:
    agent = make_agent(None, max_live=2)
    sessions: dict[int, str] = {}
    for pid, name in enumerate(("app", "web", "lib", "app", "web"), start=1):
        project = {"app": 1, "web": 2, "lib": 3}[name]
        req = request(
            root,
            f"hi {pid}",
            project_id=project,
            project_name=name,
            workdir=root / name,
            resume=sessions.get(project),
        )
        _, reply = await run(agent, req)
        sessions[project] = reply.session_id
        assert len(cli_children()) <= 2
        assert len(agent.live_projects()) <= 2
    assert agent.live_projects() == [1, 2]  # lib's CLI was the least recently used
    # Turns of three projects at once: never a third process.
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(cli_children()))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    replies = await asyncio.gather(
        *(
            run(
                agent,
                request(
                    root,
                    "again",
                    project_id=p,
                    project_name=n,
                    workdir=root / n,
                    resume=sessions[p],
                ),
            )
            for p, n in ((1, "app"), (2, "web"), (3, "lib"))
        )
    )
    watcher.cancel()
    assert peak <= 2
    assert [r[1].session_id for r in replies] == [sessions[1], sessions[2], sessions[3]]


async def test_turns_of_one_project_run_one_at_a_time(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path, sqlite_db: Database
) -> None:
    agent = make_agent(sqlite_db)
    _, first = await run(agent, request(root, "start"))
    fake.latency = 0.2
    results = await asyncio.gather(
        run(agent, request(root, "from telegram", resume=first.session_id)),
        run(agent, request(root, "from discord", resume=first.session_id)),
    )
    assert [r[1].text for r in results] == ["Echo: from telegram", "Echo: from discord"]
    # The second turn saw the first one's exchange.
    assert "from telegram" in transcript_of(fake.requests[-1])


async def test_idle_clis_are_closed(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path
) -> None:
    agent = make_agent(None, idle_s=0.2)
    await run(agent, request(root, "hi"))
    for _ in range(200):
        if not agent.live_projects() and not cli_children():
            break
        await asyncio.sleep(0.05)
    assert agent.live_projects() == [] and cli_children() == []


async def test_bad_requests_are_refused_before_starting_anything(
    make_agent: AgentFactory, root: Path
) -> None:
    agent = make_agent(None)
    cases = {
        "empty_prompt": request(root, "   "),
        "bad_setting": request(root, "hi", permission_mode="yolo"),
    }
    for kind, req in cases.items():
        with pytest.raises(AgentError) as caught:
            await run(agent, req)
        assert caught.value.kind == kind
    with pytest.raises(AgentError) as caught:
        await run(agent, request(root, "hi", max_budget_usd=0.0))
    assert caught.value.kind == "bad_setting"
    assert cli_children() == []


async def test_compact_returns_claude_codes_summary(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path, sqlite_db: Database
) -> None:
    agent = make_agent(sqlite_db)
    _, first = await run(agent, request(root, "we are building a parser"))

    def summarize(body: JSON) -> str:
        return "SUMMARY: the user builds a parser." if len(body["messages"]) > 1 else echo(body)

    fake.responder = summarize
    summary = await agent.compact(request(root, "(unused)", resume=first.session_id))
    assert summary is not None and "SUMMARY: the user builds a parser." in summary
    fake.responder = echo
    _, after = await run(agent, request(root, "go on", resume=first.session_id))
    assert after.session_id == first.session_id
    assert "SUMMARY: the user builds a parser." in transcript_of(fake.requests[-1])
    # Nothing stored, nothing to compact: no CLI is started for it.
    assert await make_agent(sqlite_db).compact(request(root, "x", resume=None)) is None


async def test_a_turn_abandoned_mid_stream_leaves_nothing_behind(
    make_agent: AgentFactory, fake: FakeAnthropic, root: Path, sqlite_db: Database
) -> None:
    agent = make_agent(sqlite_db)
    _, first = await run(agent, request(root, "start"))
    fake.words_per_chunk = 1
    fake.chunk_delay = 0.05
    fake.responder = lambda body: "one two three four five six seven eight nine ten"
    async with aclosing(
        agent.stream(request(root, "long answer", resume=first.session_id), approve)
    ) as stream:
        async for event in stream:
            if isinstance(event, TextDelta):
                break  # the chat went away
    assert agent.live_projects() == []  # the CLI still answering was stopped
    fake.chunk_delay = 0.0
    fake.responder = echo
    _, reply = await run(agent, request(root, "after", resume=first.session_id))
    assert reply.text == "Echo: after"  # not the rest of the abandoned answer
    assert reply.session_id == first.session_id
