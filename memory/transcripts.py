"""Claude Code transcripts on Palaver's database: claude_agent_sdk's ``SessionStore``.

The CLI writes every transcript line to its local JSONL file and the SDK mirrors it
here (``append``); a resume loads it back (``load``) into a temporary config dir for
the CLI. So a project's Claude Code session survives the loss of the CLI's own files,
and another Palaver process on the same PostgreSQL can continue it.

Lines are stored as the SDK hands them over, one row each, in append order (``id``).
A line's ``uuid`` makes a retried batch idempotent; lines without one are appended as
they come, as the protocol asks. Main transcripts also keep one row in
``code_transcript_sessions``: their last write time (milliseconds, strictly
increasing per session even across processes) and the SDK's folded summary, updated
in the same transaction under a row lock, so concurrent appends cannot lose a fold.

The SDK's ``SessionStore`` is a structural protocol: this class satisfies it without
importing the SDK's types at run time; only the summary fold is the SDK's own code.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from claude_agent_sdk import fold_session_summary
from sqlalchemy import Connection, Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from memory.database import Database, translate_errors
from memory.models import CodeTranscriptRow, CodeTranscriptSessionRow

if TYPE_CHECKING:
    from claude_agent_sdk.types import (
        SessionKey,
        SessionListSubkeysKey,
        SessionStoreEntry,
        SessionStoreListEntry,
        SessionSummaryEntry,
    )

transcripts: Table = CodeTranscriptRow.__table__  # type: ignore[assignment]
transcript_sessions: Table = CodeTranscriptSessionRow.__table__  # type: ignore[assignment]


def _subpath(key: Mapping[str, Any]) -> str:
    return str(key.get("subpath") or "")


def _readable(entry: Any) -> dict[str, Any]:
    return dict(entry) if isinstance(entry, dict) else {"type": "unreadable", "raw": entry}


class TranscriptStore:
    """``SessionStore`` over the ``code_transcripts`` tables (SQLite or PostgreSQL)."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._last_ms = 0

    def _now_ms(self) -> int:
        now = int(time.time() * 1000)
        self._last_ms = max(now, self._last_ms + 1)
        return self._last_ms

    # -- the SessionStore protocol ---------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        project_key, session_id, subpath = key["project_key"], key["session_id"], _subpath(key)
        now = self._now_ms()
        rows = [
            {
                "project_key": project_key,
                "session_id": session_id,
                "subpath": subpath,
                "uuid": uuid if isinstance(uuid := entry.get("uuid"), str) and uuid else None,
                "entry": dict(entry),
                "mtime_ms": now,
            }
            for entry in entries
        ]
        postgres = not self._db.is_sqlite

        def transaction(conn: Connection) -> None:
            insert_ = pg_insert(transcripts) if postgres else sqlite_insert(transcripts)
            conn.execute(insert_.on_conflict_do_nothing(), rows)
            if subpath:
                return  # subagent transcripts do not feed the main session's summary
            where = (transcript_sessions.c.project_key == project_key) & (
                transcript_sessions.c.session_id == session_id
            )
            # The row first (a no-op when it exists), then its lock: FOR UPDATE cannot
            # lock a row that is not there yet, and two first appends would collide.
            placeholder = pg_insert if postgres else sqlite_insert
            conn.execute(
                placeholder(transcript_sessions)
                .values(project_key=project_key, session_id=session_id, mtime_ms=0, summary={})
                .on_conflict_do_nothing()
            )
            row = (
                conn.execute(select(transcript_sessions).where(where).with_for_update())
                .mappings()
                .one()
            )
            previous = cast("SessionSummaryEntry", dict(row["summary"])) if row["summary"] else None
            mtime = max(now, int(row["mtime_ms"]) + 1)
            folded = dict(fold_session_summary(previous, key, entries))
            folded["mtime"] = mtime
            conn.execute(
                transcript_sessions.update().where(where).values(mtime_ms=mtime, summary=folded)
            )

        async with translate_errors():
            await self._db.run_write(transaction)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        rows = await self._select(
            select(transcripts.c.entry)
            .where(
                transcripts.c.project_key == key["project_key"],
                transcripts.c.session_id == key["session_id"],
                transcripts.c.subpath == _subpath(key),
            )
            .order_by(transcripts.c.id)
        )
        if not rows:
            return None
        return [cast("SessionStoreEntry", row["entry"]) for row in rows]

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        rows = await self._select(
            select(transcript_sessions.c.session_id, transcript_sessions.c.mtime_ms).where(
                transcript_sessions.c.project_key == project_key
            )
        )
        return [{"session_id": row["session_id"], "mtime": int(row["mtime_ms"])} for row in rows]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        rows = await self._select(
            select(transcript_sessions.c.summary, transcript_sessions.c.mtime_ms).where(
                transcript_sessions.c.project_key == project_key
            )
        )
        summaries = []
        for row in rows:
            summary = dict(row["summary"])
            summary["mtime"] = int(row["mtime_ms"])
            summaries.append(cast("SessionSummaryEntry", summary))
        return summaries

    async def delete(self, key: SessionKey) -> None:
        project_key, session_id, subpath = key["project_key"], key["session_id"], _subpath(key)

        def transaction(conn: Connection) -> None:
            of_session = (transcripts.c.project_key == project_key) & (
                transcripts.c.session_id == session_id
            )
            if subpath:
                conn.execute(
                    delete(transcripts).where(of_session, transcripts.c.subpath == subpath)
                )
                return
            conn.execute(delete(transcripts).where(of_session))  # the main one and its subkeys
            conn.execute(
                delete(transcript_sessions).where(
                    transcript_sessions.c.project_key == project_key,
                    transcript_sessions.c.session_id == session_id,
                )
            )

        async with translate_errors():
            await self._db.run_write(transaction)

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        rows = await self._select(
            select(transcripts.c.subpath)
            .where(
                transcripts.c.project_key == key["project_key"],
                transcripts.c.session_id == key["session_id"],
                transcripts.c.subpath != "",
            )
            .distinct()
            .order_by(transcripts.c.subpath)
        )
        return [str(row["subpath"]) for row in rows]

    # -- Palaver's own uses: export and retention ---------------------------------------

    async def entries(self, session_id: str) -> list[dict[str, Any]]:
        """The main transcript of a Claude Code session, line by line (for /export).

        Session ids are UUIDs, so the id alone finds it whatever directory the project
        worked in. Empty when nothing was stored (or retention deleted it). A line that
        is not a JSON object (a corrupt transcript) comes as ``{"type": "unreadable",
        "raw": <what is stored>}``: kept, and never the reason an export fails.
        """
        rows = await self._select(
            select(transcripts.c.entry)
            .where(transcripts.c.session_id == session_id, transcripts.c.subpath == "")
            .order_by(transcripts.c.id)
        )
        return [_readable(row["entry"]) for row in rows]

    async def delete_sessions(self, session_ids: Iterable[str]) -> int:
        """Delete these sessions' transcripts, subagents' included; returns lines deleted."""
        ids = sorted(set(session_ids))
        if not ids:
            return 0

        def transaction(conn: Connection) -> int:
            result = conn.execute(delete(transcripts).where(transcripts.c.session_id.in_(ids)))
            conn.execute(
                delete(transcript_sessions).where(transcript_sessions.c.session_id.in_(ids))
            )
            return int(result.rowcount or 0)

        async with translate_errors():
            return await self._db.run_write(transaction)

    async def _select(self, query: Any) -> Sequence[Mapping[Any, Any]]:
        async with translate_errors(), self._db.reader.connect() as conn:
            return (await conn.execute(query)).mappings().all()
