"""Claude Code transcripts and session history on the database (SQLite and PostgreSQL):
the SDK's own SessionStore conformance suite, Palaver's export and retention, and the
code_sessions history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from claude_agent_sdk.testing import run_session_store_conformance
from sqlalchemy import delete

from memory.code_sessions import CodeSessions, CodeSessionStatus
from memory.database import Database, migrate, open_database
from memory.errors import ProjectNotFound
from memory.settings import DatabaseSettings
from memory.store import Store
from memory.transcripts import TranscriptStore, transcript_sessions, transcripts
from memory.types import Usage


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    db = open_database(db_url, DatabaseSettings(busy_timeout_ms=10_000))
    await migrate(db)
    yield db
    await db.dispose()


async def test_session_store_conformance(database: Database) -> None:
    async def fresh() -> TranscriptStore:
        # Each contract gets an empty store: the tables are emptied, as the suite asks.
        async with database.writer.begin() as conn:
            await conn.execute(delete(transcripts))
            await conn.execute(delete(transcript_sessions))
        return TranscriptStore(database)

    await run_session_store_conformance(fresh)


def _line(uuid: str | None, text: str) -> Any:
    """A transcript line as the CLI writes them (``SessionStoreEntry``)."""
    line: dict[str, object] = {"type": "user", "message": {"role": "user", "content": text}}
    if uuid is not None:
        line["uuid"] = uuid
    return line


async def test_retried_batch_is_idempotent_and_lines_without_uuid_are_kept(
    database: Database,
) -> None:
    store = TranscriptStore(database)
    key: Any = {
        "project_key": "-srv-projects-app",
        "session_id": "0b5c5d7e-1111-4a4a-9b9b-123456789abc",
    }
    batch = [_line("u1", "one"), _line(None, "mode marker"), _line("u2", "two")]
    await store.append(key, batch)
    await store.append(key, [*batch[2:], _line("u3", "three")])
    loaded = await store.load(key)
    assert loaded is not None
    assert [line.get("uuid") for line in loaded] == ["u1", None, "u2", "u3"]


async def test_export_reads_a_session_by_id_and_retention_deletes_it(database: Database) -> None:
    store = TranscriptStore(database)
    sid, other = "9e0f8a52-2222-4c4c-8d8d-abcdefabcdef", "9e0f8a52-3333-4c4c-8d8d-abcdefabcdef"
    main: Any = {"project_key": "-srv-projects-app", "session_id": sid}
    await store.append(main, [_line("a", "hello"), _line("b", "world")])
    subagent: Any = {**main, "subpath": "subagents/agent-1"}
    await store.append(subagent, [_line("c", "sub")])
    elsewhere: Any = {"project_key": "-x", "session_id": other}
    await store.append(elsewhere, [_line("d", "keep")])

    exported = await store.entries(sid)
    assert [e["uuid"] for e in exported] == ["a", "b"]  # the main transcript only
    assert await store.entries("never-stored") == []

    assert await store.delete_sessions([sid]) == 3
    assert await store.entries(sid) == []
    assert await store.list_subkeys(main) == []
    assert await store.list_sessions("-srv-projects-app") == []
    assert [e["uuid"] for e in await store.entries(other)] == ["d"]


async def test_concurrent_appends_keep_every_line_and_one_summary(database: Database) -> None:
    stores = [TranscriptStore(database), TranscriptStore(database)]
    key: Any = {"project_key": "p", "session_id": "5f5f5f5f-4444-4d4d-8e8e-000000000000"}
    await asyncio.gather(
        *(stores[i % 2].append(key, [_line(f"u{i}", f"line {i}")]) for i in range(20))
    )
    loaded = await stores[0].load(key)
    assert loaded is not None and sorted(str(e["uuid"]) for e in loaded) == sorted(
        f"u{i}" for i in range(20)
    )
    summaries = await stores[1].list_session_summaries("p")
    assert len(summaries) == 1
    listed = await stores[1].list_sessions("p")
    assert summaries[0]["mtime"] == listed[0]["mtime"]


# -- code_sessions ------------------------------------------------------------------------


async def _project(database: Database, name: str = "app") -> int:
    project = await Store(database).projects.create(name, agent_kind="claude_code", workdir=name)
    return project.id


async def test_history_of_a_projects_sessions(database: Database) -> None:
    sessions = CodeSessions(database)
    pid = await _project(database)
    assert await sessions.current(pid) is None
    t0 = datetime(2026, 1, 1, 12, tzinfo=UTC)

    first = await sessions.record_turn(
        pid, "s-1", chat_ref="telegram:1:", usage=Usage(10, 5, 0, 100, 0.25), num_turns=3, now=t0
    )
    assert (first.turns, first.num_turns, first.status) == (1, 3, CodeSessionStatus.CURRENT)
    again = await sessions.record_turn(
        pid,
        "s-1",
        chat_ref="discord:7:",
        usage=Usage(1, 2, 3, 4, 0.5),
        num_turns=1,
        context_tokens=1234,
        now=t0 + timedelta(minutes=5),
    )
    assert again.turns == 2 and again.num_turns == 4
    assert again.usage == Usage(11, 7, 3, 104, 0.75)
    assert again.chat_refs == ("telegram:1:", "discord:7:")
    assert again.context_tokens == 1234
    assert again.started_at == t0 and again.last_used_at == t0 + timedelta(minutes=5)
    assert await sessions.belongs(pid, "s-1") and not await sessions.belongs(pid, "s-x")

    # A reset retires the current session (kept) and leaves none current.
    retired = await sessions.reset(pid)
    assert retired is not None and retired.session_id == "s-1"
    assert retired.status is CodeSessionStatus.RETIRED
    assert await sessions.current(pid) is None
    assert await sessions.reset(pid) is None

    # The next turn starts a new session; the one after it was lost names the old one.
    await sessions.record_turn(pid, "s-2", chat_ref=None, usage=Usage(), num_turns=1, now=t0)
    current = await sessions.record_turn(
        pid, "s-3", chat_ref="telegram:1:", usage=Usage(), num_turns=1, lost="s-2", now=t0
    )
    assert current.status is CodeSessionStatus.CURRENT
    by_id = {s.session_id: s.status for s in await sessions.history(pid)}
    assert by_id == {
        "s-1": CodeSessionStatus.RETIRED,
        "s-2": CodeSessionStatus.LOST,
        "s-3": CodeSessionStatus.CURRENT,
    }
    assert (await sessions.current(pid)).session_id == "s-3"  # type: ignore[union-attr]

    # Another project's sessions are its own.
    other = await _project(database, "other")
    assert not await sessions.belongs(other, "s-3")
    assert await sessions.history(other) == []
    # The same id recorded later under another project stays the first project's.
    later = t0 + timedelta(minutes=9)
    await sessions.record_turn(other, "s-3", chat_ref=None, usage=Usage(), num_turns=0, now=later)
    assert not await sessions.belongs(other, "s-3") and await sessions.belongs(pid, "s-3")


async def test_one_current_session_under_concurrent_turns(database: Database) -> None:
    sessions = [CodeSessions(database), CodeSessions(database)]
    pid = await _project(database)
    await asyncio.gather(
        *(
            sessions[i % 2].record_turn(
                pid, f"s-{i % 3}", chat_ref=f"c{i}", usage=Usage(1, 1), num_turns=1
            )
            for i in range(12)
        )
    )
    history = await sessions[0].history(pid)
    assert sum(s.status is CodeSessionStatus.CURRENT for s in history) == 1
    assert sum(s.turns for s in history) == 12


async def test_retention_and_unknown_projects(database: Database) -> None:
    sessions = CodeSessions(database)
    pid = await _project(database)
    old = datetime(2025, 1, 1, tzinfo=UTC)
    await sessions.record_turn(pid, "old", chat_ref=None, usage=Usage(), num_turns=1, now=old)
    await sessions.record_turn(pid, "new", chat_ref=None, usage=Usage(), num_turns=1, now=old)
    stale = await sessions.unused_since(datetime(2025, 6, 1, tzinfo=UTC))
    assert [s.session_id for s in stale] == ["old"]  # the current one is never offered
    assert await sessions.delete_sessions(["old"]) == 1
    assert [s.session_id for s in await sessions.history(pid)] == ["new"]
    assert await sessions.delete_project(pid) == ["new"]
    assert await sessions.history(pid) == []

    with pytest.raises(ProjectNotFound):
        await sessions.record_turn(9999, "s", chat_ref=None, usage=Usage(), num_turns=1)
    with pytest.raises(ValueError):
        await sessions.record_turn(pid, "", chat_ref=None, usage=Usage(), num_turns=1)


async def test_migration_0004_matches_the_models(database: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import Connection

    from memory.models import Base

    def differences(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
        return [d for d in diff if "code_" in repr(d)]

    async with database.reader.connect() as conn:
        assert await conn.run_sync(differences) == []
