"""Engines and schema: SQLite (the embedded default) or PostgreSQL, one code path.

SQLite gets WAL, foreign keys, a busy timeout and ``BEGIN IMMEDIATE`` on the write
engine, so that a transaction that will write takes the lock up front instead of
failing half-way when another process holds it. Reads use a separate engine with
ordinary deferred transactions, which WAL lets run beside the writer.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from memory.checkpoint import WalCheckpointer
from memory.errors import StoreUnavailable
from memory.private_files import private_dir, private_file, warn_if_loose
from memory.settings import DatabaseSettings
from memory.sqlite_fast import SqliteFastPath, begin_immediate

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
    # SQLite only: reads and writes on the driver's own thread (memory.sqlite_fast).
    fast: SqliteFastPath | None = field(default=None)

    @property
    def is_sqlite(self) -> bool:
        return self.reader.dialect.name == "sqlite"

    def note_write(self) -> None:
        """Writes that bypass SQLAlchemy's commit report here (the batch append)."""
        if self.checkpointer is not None:
            self.checkpointer.note_write()

    async def run_write(self, transaction: Callable[[Connection], _T]) -> _T:
        """Run ``transaction(connection)``, synchronous Core, in one write transaction:
        on SQLite as one call on the writer's thread, elsewhere through ``run_sync``."""
        if self.fast is not None:
            return await self.fast.write(transaction)
        async with self.writer.begin() as conn:
            return await conn.run_sync(transaction)

    async def dispose(self) -> None:
        if self.checkpointer is not None:
            await self.checkpointer.close()
        if self.fast is not None:
            await self.fast.close()
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

    event.listen(engine.sync_engine, "begin", begin_immediate if immediate else _begin)
    return engine


def _begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


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

        fast = SqliteFastPath(reader, writer, checkpointer.note_write)
        return Database(url, reader, writer, checkpointer, fast)
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
