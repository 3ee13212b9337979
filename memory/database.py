"""Engines and schema: SQLite (the embedded default) or PostgreSQL, one code path.

SQLite gets WAL, foreign keys, a busy timeout and ``BEGIN IMMEDIATE`` on the write
engine, so that a transaction that will write takes the lock up front instead of
failing half-way when another process holds it. Reads use a separate engine with
ordinary deferred transactions, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from memory.checkpoint import WalCheckpointer
from memory.errors import StoreUnavailable
from memory.private_files import private_dir, private_file, warn_if_loose
from memory.settings import DatabaseSettings

MIGRATIONS = Path(__file__).parent / "migrations"

_T = TypeVar("_T")


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'palaver.db'}"


@dataclass(slots=True)
class Database:
    """The engines of one database: ``writer`` for transactions that write."""

    url: str
    reader: AsyncEngine
    writer: AsyncEngine
    # SQLite only: the write connection leaves checkpoints to this (memory.checkpoint).
    checkpointer: WalCheckpointer | None = field(default=None)
    # SQLite only: a read connection kept checked out for run_read().
    _pinned: AsyncConnection | None = field(default=None, init=False)
    _pinning: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    # SQLite only: a sync engine over the write connection's own sqlite3 handle.
    _shadow: tuple[sqlite3.Connection, Engine] | None = field(default=None, init=False)

    @property
    def is_sqlite(self) -> bool:
        return self.reader.dialect.name == "sqlite"

    def note_write(self) -> None:
        """Writes that bypass SQLAlchemy's commit report here (Store's hot path)."""
        if self.checkpointer is not None:
            self.checkpointer.note_write()

    async def run_read(self, read: Callable[..., _T], *args: Any) -> _T:
        """Run ``read(sqlite3_connection, *args)`` on a read connection's own thread.

        For the reads every turn makes: through SQLAlchemy's adapter one SELECT costs
        a pool checkout, several hand-offs to the driver's thread and a rollback on
        return; here it is one hand-off. The connection is one of the read pool's,
        kept checked out, outside any transaction (each statement sees the latest
        commit). SQLite only.
        """
        pinned = self._pinned
        if pinned is None:
            async with self._pinning:
                if self._pinned is None:
                    self._pinned = await self.reader.connect()
                pinned = self._pinned
        return await _on_driver_thread(pinned, read, *args)

    async def run_on_writer(self, work: Callable[..., _T], *args: Any) -> _T:
        """Run ``work(sqlite3_connection, *args)`` as one call on the write connection's
        own thread: the single writer, so it queues behind the transactions before it.
        ``work`` owns its transaction (BEGIN IMMEDIATE ... COMMIT). SQLite only."""
        async with self.writer.connect() as conn:
            result = await _on_driver_thread(conn, work, *args)
        self.note_write()
        return result

    async def run_write(self, transaction: Callable[[Connection], _T]) -> _T:
        """Run ``transaction(connection)``, synchronous Core, in one write transaction.

        On SQLite it runs on the write connection's own driver thread, through a
        synchronous engine over that same sqlite3 handle: one hand-off for the whole
        transaction instead of several per statement, still the single writer, so it
        queues behind message batches instead of busy-waiting on a second connection.
        Elsewhere it runs through ``AsyncConnection.run_sync``.
        """
        if not self.is_sqlite:
            async with self.writer.begin() as conn:
                return await conn.run_sync(transaction)
        return await self.run_on_writer(self._in_shadow, transaction)

    def _in_shadow(self, handle: sqlite3.Connection, transaction: Callable[[Connection], _T]) -> _T:
        """On the driver's thread: ``transaction`` in BEGIN IMMEDIATE on ``handle``."""
        if self._shadow is None or self._shadow[0] is not handle:
            # New, or the pool replaced its connection: an engine for this handle.
            engine = create_engine("sqlite://", creator=lambda: handle, poolclass=StaticPool)
            event.listen(engine, "begin", _begin_immediate)
            self._shadow = (handle, engine)
        with self._shadow[1].begin() as conn:
            return transaction(conn)

    async def dispose(self) -> None:
        if self.checkpointer is not None:
            await self.checkpointer.close()
        if self._pinned is not None:
            await self._pinned.close()
            self._pinned = None
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def _sqlite_engine(url: str, settings: DatabaseSettings, *, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(
        url,
        echo=settings.echo,
        connect_args={"timeout": settings.busy_timeout_ms / 1000},
        # The write engine needs one connection: SQLite has a single writer anyway.
        pool_size=1 if immediate else 5,
        max_overflow=0 if immediate else 10,
        # Every write runs in begin(), which always commits or rolls back: the
        # pool's own rollback on return would be one more trip to the driver thread.
        pool_reset_on_return=None if immediate else "rollback",
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(settings.busy_timeout_ms)}")
        cursor.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
        if immediate:
            # No checkpoint inside a commit: WalCheckpointer runs them beside writes.
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    event.listen(engine.sync_engine, "begin", _begin_immediate if immediate else _begin)
    return engine


async def _on_driver_thread(conn: AsyncConnection, work: Callable[..., _T], *args: Any) -> _T:
    """``work(sqlite3_connection, *args)`` as one call on aiosqlite's connection thread.

    aiosqlite runs one callable at a time there (Connection._execute, with its
    sqlite3 handle _conn): the one place Palaver uses those private names.
    """
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    result: _T = await driver._execute(work, driver._conn, *args)
    return result


def _begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database or a URI."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    name = parsed.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


def _private_sqlite_file(path: Path) -> None:
    """Its directory 0700 (made if missing, one level) and the file 0600 before SQLite
    opens it: SQLite gives the -wal and -shm files it makes the database file's mode."""
    try:
        private_dir(path.parent)
        private_file(path)
    except OSError as error:
        raise StoreUnavailable(
            f"cannot create the SQLite database {path}: {error.strerror or error}"
        ) from None
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            warn_if_loose(companion, 0o600)


def open_database(url: str, settings: DatabaseSettings) -> Database:
    """Create the engines for ``url``; nothing connects until first use. A SQLite
    file is created private first (memory.private_files)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            _private_sqlite_file(path)
        writer = _sqlite_engine(url, settings, immediate=True)
        reader = _sqlite_engine(url, settings, immediate=False)
        checkpointer = WalCheckpointer(reader, writer)

        @event.listens_for(writer.sync_engine, "commit")
        def _on_commit(_conn: Connection) -> None:
            checkpointer.note_write()

        return Database(url, reader, writer, checkpointer)
    if parsed.get_backend_name() == "postgresql":
        engine = create_async_engine(
            url,
            echo=settings.echo,
            pool_size=settings.pool_size,
            max_overflow=settings.pool_size,
            pool_pre_ping=True,
            connect_args={"timeout": settings.connect_timeout_s},
        )
        return Database(url, engine, engine)
    raise StoreUnavailable(
        f"database.url uses {parsed.get_backend_name()!r}; "
        "supported are sqlite+aiosqlite and postgresql+asyncpg"
    )


def describe_db_error(error: BaseException) -> str:
    """A plain description of a driver error, without the URL or credentials."""
    text = str(getattr(error, "orig", None) or error).splitlines()[0]
    if "locked" in text or "busy" in text:
        return "the database is locked by another process; try again shortly"
    if isinstance(error, OSError | ConnectionError) or "connect" in text.lower():
        return "the database cannot be reached"
    return "the database failed"


@contextlib.asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn driver and connection errors into ``StoreUnavailable``."""
    try:
        yield
    except sqlite3.OperationalError as error:  # raised by aiosqlite on the hot path
        raise StoreUnavailable(describe_db_error(error)) from error
    except (TimeoutError, OperationalError, DBAPIError, OSError) as error:
        if isinstance(error, DBAPIError) and not isinstance(error, OperationalError):
            orig = getattr(error, "orig", None)
            name = type(orig).__name__ if orig is not None else ""
            if "Integrity" in name or "UniqueViolation" in name:
                raise
            if "Connection" not in name and "Interface" not in name:
                raise
        raise StoreUnavailable(describe_db_error(error)) from error


def _upgrade(connection: Connection) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(database: Database) -> None:
    """Bring the schema up to date (Alembic, to head)."""
    async with translate_errors(), database.writer.begin() as conn:
        await conn.run_sync(_upgrade)
