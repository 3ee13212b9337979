"""SQLite's fast paths: the one module that talks to the sqlite3 driver directly.

Through SQLAlchemy's async adapter one statement costs a pool checkout, several
hand-offs to aiosqlite's connection thread and a rollback on return. The turn makes
a few reads and one append per message, so on SQLite those run here as single
calls on the driver's own thread instead:

- ``CompiledRead``: a Core SELECT compiled once to SQL for the sqlite3 driver, its
  values passed through the dialect's own processors (a row reads exactly as it
  would through SQLAlchemy);
- ``SqliteFastPath.read``: such a read on a read connection kept checked out;
- ``SqliteFastPath.on_writer``: a whole transaction as one call on the write
  connection's thread (the single writer, so it queues behind the batches before it);
- ``SqliteFastPath.write``: synchronous Core in one ``BEGIN IMMEDIATE`` transaction
  on that same thread, through an engine over the write connection's own handle.

PostgreSQL runs the same Core statements through asyncpg; nothing here is used.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, create_engine, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import StaticPool

_T = TypeVar("_T")
_REQUIRED = object()


def _identity(value: Any) -> Any:
    return value


async def on_driver_thread(conn: AsyncConnection, work: Callable[..., _T], *args: Any) -> _T:
    """``work(sqlite3_connection, *args)`` as one call on aiosqlite's connection thread.

    aiosqlite runs one callable at a time there (Connection._execute, with its
    sqlite3 handle _conn): the one place Palaver uses those private names.
    """
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    result: _T = await driver._execute(work, driver._conn, *args)
    return result


def begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class CompiledRead:
    """A Core SELECT compiled once for the sqlite3 driver, for ``SqliteFastPath.read``."""

    def __init__(self, query: Select[Any], dialect: Any) -> None:
        compiled = query.compile(dialect=dialect)
        self.sql = str(compiled)
        binds = [compiled.binds[name] for name in compiled.positiontup or ()]
        # (name, processor, value): a bound literal (the 0.0 of a coalesce) keeps
        # its own value; a named bindparam must be given.
        self.params = [
            (
                b.key,
                b.type.dialect_impl(dialect).bind_processor(dialect),
                _REQUIRED if b.required else b.effective_value,
            )
            for b in binds
        ]
        self.keys = [str(c.key) for c in query.selected_columns]
        self.processors = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) or _identity
            for c in query.selected_columns
        ]

    def __call__(
        self, conn: sqlite3.Connection, values: Mapping[str, Any]
    ) -> list[Mapping[str, Any]]:
        """Runs on the driver's thread: the rows, as mappings."""
        args = []
        for name, process, literal in self.params:
            value = values[name] if literal is _REQUIRED else values.get(name, literal)
            args.append(value if process is None else process(value))
        rows = conn.execute(self.sql, args).fetchall()
        keys, processors = self.keys, self.processors
        return [{k: p(v) for k, p, v in zip(keys, processors, row, strict=True)} for row in rows]


class SqliteFastPath:
    """The driver-thread calls of one SQLite database (see the module docstring)."""

    def __init__(self, reader: AsyncEngine, writer: AsyncEngine, on_write: Callable[[], None]):
        self._reader = reader
        self._writer = writer
        self._on_write = on_write
        self._reads: dict[Select[Any], CompiledRead] = {}
        # A read connection kept checked out, outside any transaction (each statement
        # sees the latest commit).
        self._pinned: AsyncConnection | None = None
        self._pinning = asyncio.Lock()
        # A sync engine over the write connection's own sqlite3 handle.
        self._shadow: tuple[sqlite3.Connection, Engine] | None = None

    async def read(self, query: Select[Any], values: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The rows of ``query`` in one hand-off to a read connection's thread."""
        compiled = self._reads.get(query)
        if compiled is None:
            compiled = self._reads[query] = CompiledRead(query, self._reader.dialect)
        pinned = self._pinned
        if pinned is None:
            async with self._pinning:
                if self._pinned is None:
                    self._pinned = await self._reader.connect()
                pinned = self._pinned
        return await on_driver_thread(pinned, compiled, values)

    async def on_writer(self, work: Callable[..., _T], *args: Any) -> _T:
        """Run ``work(sqlite3_connection, *args)`` as one call on the write connection's
        thread. ``work`` owns its transaction (BEGIN IMMEDIATE ... COMMIT)."""
        async with self._writer.connect() as conn:
            result = await on_driver_thread(conn, work, *args)
        self._on_write()
        return result

    async def write(self, transaction: Callable[[Connection], _T]) -> _T:
        """Run ``transaction(connection)``, synchronous Core, in BEGIN IMMEDIATE on the
        write connection's thread: one hand-off for the whole transaction."""
        return await self.on_writer(self._in_shadow, transaction)

    def _in_shadow(self, handle: sqlite3.Connection, transaction: Callable[[Connection], _T]) -> _T:
        if self._shadow is None or self._shadow[0] is not handle:
            # New, or the pool replaced its connection: an engine for this handle.
            engine = create_engine("sqlite://", creator=lambda: handle, poolclass=StaticPool)
            event.listen(engine, "begin", begin_immediate)
            self._shadow = (handle, engine)
        with self._shadow[1].begin() as conn:
            return transaction(conn)

    async def close(self) -> None:
        if self._pinned is not None:
            await self._pinned.close()
            self._pinned = None
