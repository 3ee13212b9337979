"""The Claude Code sessions of each project: which one the next turn resumes, and
the history of every id a project used.

A project has at most one ``current`` session. A turn that ends on another id (a
fresh start after a reset, or after a session was lost) makes the old current one
``retired`` (or ``lost``, when the agent said it could not be resumed), so nothing is
forgotten and ``/project history`` can show it. ``reset`` retires the current one
without naming a successor: the next turn starts fresh. Every write locks the
project's row (``FOR UPDATE`` on PostgreSQL; SQLite's single writer), so two
processes recording turns of one project cannot both leave a ``current`` row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, update

from memory.database import Database, translate_errors
from memory.errors import ProjectNotFound
from memory.models import CodeSessionRow, ProjectRow
from memory.types import Usage

code_sessions: Table = CodeSessionRow.__table__  # type: ignore[assignment]
projects: Table = ProjectRow.__table__  # type: ignore[assignment]

MAX_CHAT_REFS = 50  # chats listed per session; the oldest are dropped past it


class CodeSessionStatus(StrEnum):
    CURRENT = "current"
    RETIRED = "retired"  # left by /project reset, or replaced by a newer session
    LOST = "lost"  # could not be resumed; a fresh session took its place


@dataclass(frozen=True, slots=True)
class CodeSession:
    project_id: int
    session_id: str
    status: CodeSessionStatus
    started_at: datetime
    last_used_at: datetime
    turns: int  # Palaver turns (prompts sent)
    num_turns: int  # model round trips, as Claude Code counts them
    usage: Usage
    context_tokens: int  # the context size after the last turn
    chat_refs: tuple[str, ...]  # ChatKey.ref of every chat that used it, oldest first


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _code_session(row: Mapping[Any, Any]) -> CodeSession:
    return CodeSession(
        project_id=row["project_id"],
        session_id=row["session_id"],
        status=CodeSessionStatus(row["status"]),
        started_at=_utc(row["started_at"]),
        last_used_at=_utc(row["last_used_at"]),
        turns=row["turns"],
        num_turns=row["num_turns"],
        usage=Usage(
            row["input_tokens"],
            row["output_tokens"],
            row["cache_read_tokens"],
            row["cache_write_tokens"],
            row["cost_usd"],
        ),
        context_tokens=row["context_tokens"],
        chat_refs=tuple(row["chat_refs"] or ()),
    )


def _lock_project(conn: Connection, project_id: int) -> None:
    found = conn.execute(
        select(projects.c.id).where(projects.c.id == project_id).with_for_update()
    ).first()
    if found is None:
        raise ProjectNotFound(f"no project with id {project_id}")


class CodeSessions:
    """The ``code_sessions`` table, over one database (SQLite or PostgreSQL)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def current(self, project_id: int) -> CodeSession | None:
        """The session the project's next turn resumes, or None: start fresh."""
        rows = await self._select(
            select(code_sessions).where(
                code_sessions.c.project_id == project_id,
                code_sessions.c.status == CodeSessionStatus.CURRENT.value,
            )
        )
        return _code_session(rows[0]) if rows else None

    async def record_turn(
        self,
        project_id: int,
        session_id: str,
        *,
        chat_ref: str | None,
        usage: Usage,
        num_turns: int,
        context_tokens: int = 0,
        lost: str | None = None,
        now: datetime | None = None,
    ) -> CodeSession:
        """Add a finished turn to ``session_id``, which becomes the project's current
        session. ``lost`` names the session the agent could not resume (it is marked
        lost); any other current session is retired."""
        if not session_id:
            raise ValueError("session_id is empty")
        at = now or datetime.now(UTC)

        def transaction(conn: Connection) -> CodeSession:
            _lock_project(conn, project_id)
            of_project = code_sessions.c.project_id == project_id
            if lost is not None and lost != session_id:
                conn.execute(
                    update(code_sessions)
                    .where(of_project, code_sessions.c.session_id == lost)
                    .values(status=CodeSessionStatus.LOST.value)
                )
            conn.execute(
                update(code_sessions)
                .where(
                    of_project,
                    code_sessions.c.status == CodeSessionStatus.CURRENT.value,
                    code_sessions.c.session_id != session_id,
                )
                .values(status=CodeSessionStatus.RETIRED.value)
            )
            this = of_project & (code_sessions.c.session_id == session_id)
            row = conn.execute(select(code_sessions).where(this)).mappings().first()
            if row is None:
                conn.execute(
                    insert(code_sessions).values(
                        project_id=project_id,
                        session_id=session_id,
                        status=CodeSessionStatus.CURRENT.value,
                        started_at=at,
                        last_used_at=at,
                        turns=1,
                        num_turns=num_turns,
                        input_tokens=usage.input_tokens,
                        output_tokens=usage.output_tokens,
                        cache_read_tokens=usage.cache_read_tokens,
                        cache_write_tokens=usage.cache_write_tokens,
                        cost_usd=usage.cost_usd,
                        context_tokens=context_tokens,
                        chat_refs=[chat_ref] if chat_ref else [],
                    )
                )
            else:
                refs = list(row["chat_refs"] or [])
                if chat_ref and chat_ref not in refs:
                    refs = [*refs, chat_ref][-MAX_CHAT_REFS:]
                conn.execute(
                    update(code_sessions)
                    .where(this)
                    .values(
                        status=CodeSessionStatus.CURRENT.value,
                        last_used_at=at,
                        turns=code_sessions.c.turns + 1,
                        num_turns=code_sessions.c.num_turns + num_turns,
                        input_tokens=code_sessions.c.input_tokens + usage.input_tokens,
                        output_tokens=code_sessions.c.output_tokens + usage.output_tokens,
                        cache_read_tokens=code_sessions.c.cache_read_tokens
                        + usage.cache_read_tokens,
                        cache_write_tokens=code_sessions.c.cache_write_tokens
                        + usage.cache_write_tokens,
                        cost_usd=code_sessions.c.cost_usd + usage.cost_usd,
                        context_tokens=context_tokens,
                        chat_refs=refs,
                    )
                )
            stored = conn.execute(select(code_sessions).where(this)).mappings().one()
            return _code_session(stored)

        async with translate_errors():
            return await self._db.run_write(transaction)

    async def reset(self, project_id: int) -> CodeSession | None:
        """Retire the current session (kept, with its transcript): the next turn starts
        a fresh one. Returns what was retired, or None when nothing was current."""

        def transaction(conn: Connection) -> CodeSession | None:
            _lock_project(conn, project_id)
            row = (
                conn.execute(
                    select(code_sessions).where(
                        code_sessions.c.project_id == project_id,
                        code_sessions.c.status == CodeSessionStatus.CURRENT.value,
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            conn.execute(
                update(code_sessions)
                .where(code_sessions.c.id == row["id"])
                .values(status=CodeSessionStatus.RETIRED.value)
            )
            return _code_session({**row, "status": CodeSessionStatus.RETIRED.value})

        async with translate_errors():
            return await self._db.run_write(transaction)

    async def history(self, project_id: int, *, limit: int = 50) -> list[CodeSession]:
        """The project's sessions, the most recently used first."""
        return [
            _code_session(row)
            for row in await self._select(
                select(code_sessions)
                .where(code_sessions.c.project_id == project_id)
                .order_by(code_sessions.c.last_used_at.desc(), code_sessions.c.id.desc())
                .limit(limit)
            )
        ]

    async def belongs(self, project_id: int, session_id: str) -> bool:
        """Whether ``session_id`` is the project's own: recorded for it (any status),
        and by no other project before it.

        A Claude Code session is one project's conversation. The same id under a
        second project (a row written by mistake, copied, or forged) would make that
        project's turn continue another project's conversation when both work in one
        directory; the project that recorded it first owns it.
        """
        rows = await self._select(
            select(code_sessions.c.project_id)
            .where(code_sessions.c.session_id == session_id)
            .order_by(code_sessions.c.started_at, code_sessions.c.id)
            .limit(1)
        )
        return bool(rows) and rows[0]["project_id"] == project_id

    async def unused_since(self, before: datetime, *, limit: int = 500) -> list[CodeSession]:
        """Sessions that are not current and were last used before ``before``: what
        retention may delete (with their transcripts)."""
        return [
            _code_session(row)
            for row in await self._select(
                select(code_sessions)
                .where(
                    code_sessions.c.status != CodeSessionStatus.CURRENT.value,
                    code_sessions.c.last_used_at < before,
                )
                .order_by(code_sessions.c.last_used_at)
                .limit(limit)
            )
        ]

    async def delete_sessions(self, session_ids: Iterable[str]) -> int:
        """Forget these session ids (their transcripts are TranscriptStore's)."""
        ids = sorted(set(session_ids))
        if not ids:
            return 0

        def transaction(conn: Connection) -> int:
            result = conn.execute(delete(code_sessions).where(code_sessions.c.session_id.in_(ids)))
            return int(result.rowcount or 0)

        async with translate_errors():
            return await self._db.run_write(transaction)

    async def delete_project(self, project_id: int) -> list[str]:
        """Forget every session of a project; returns their ids (for the transcripts)."""

        def transaction(conn: Connection) -> list[str]:
            ids = list(
                conn.execute(
                    select(code_sessions.c.session_id).where(
                        code_sessions.c.project_id == project_id
                    )
                ).scalars()
            )
            conn.execute(delete(code_sessions).where(code_sessions.c.project_id == project_id))
            return ids

        async with translate_errors():
            return await self._db.run_write(transaction)

    async def _select(self, query: Any) -> Sequence[Mapping[Any, Any]]:
        async with translate_errors(), self._db.reader.connect() as conn:
            return (await conn.execute(query)).mappings().all()
