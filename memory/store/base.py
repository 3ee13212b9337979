"""What every repository of the store shares: its database, row locking, and the
version bump that every write to a session makes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Update

from memory.database import Database, translate_errors
from memory.errors import SessionNotFound
from memory.store.rows import SessionDelta, sessions

_Q = TypeVar("_Q", bound=Select[Any])


def bump_statement(row: Mapping[Any, Any], **values: Any) -> Update:
    """Write ``values`` to the session of ``row`` and move its version on by one."""
    return (
        update(sessions)
        .where(sessions.c.id == row["id"])
        .values(version=sessions.c.version + 1, **values)
    )


class Repository:
    """Async access to some tables of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def read_hot(
        self, query: Select[Any], values: Mapping[str, Any]
    ) -> list[Mapping[str, Any]]:
        """Rows of one of the reads every turn makes: one hand-off on SQLite, Core elsewhere."""
        async with translate_errors():
            if self.db.fast is not None:
                return await self.db.fast.read(query, values)
            async with self.db.reader.connect() as conn:
                return list((await conn.execute(query, values)).mappings())

    def locked(self, query: _Q) -> _Q:
        # SQLite's BEGIN IMMEDIATE already holds the write lock; PostgreSQL locks rows.
        return query if self.db.is_sqlite else query.with_for_update()

    async def session_row(
        self, conn: AsyncConnection, session_id: int, *, lock: bool = False
    ) -> Mapping[Any, Any]:
        """The session's row (locked for writing with ``lock``), or SessionNotFound."""
        query = select(sessions).where(sessions.c.id == session_id)
        if lock:
            query = self.locked(query)
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise SessionNotFound(f"session {session_id} does not exist")
        return row

    async def bump(
        self, conn: AsyncConnection, row: Mapping[Any, Any], **values: Any
    ) -> SessionDelta:
        await conn.execute(bump_statement(row, **values))
        return SessionDelta(row["id"], row["version"], row["version"] + 1)
