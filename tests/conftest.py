"""Shared fixtures: databases (SQLite always, PostgreSQL when TEST_DATABASE_URL is
set) and session managers built exactly as the application builds them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from memory.database import Database, migrate, open_database
from memory.manager import SessionManager
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import Store
from memory.summarizer import Summarizer
from memory.tokens import TokenCounter

PG_URL = os.environ.get("TEST_DATABASE_URL", "")
NO_PG = "PostgreSQL tests need TEST_DATABASE_URL (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)"

# Small budgets so that summarization happens after a few dozen short messages.
SMALL = {"token_limit": 2000, "summary_max_tokens": 200, "max_message_tokens": 800}


async def reset_postgres(url: str) -> None:
    """Give each test an empty public schema: tests must not see each other's rows."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'palaver.db'}"
    if not PG_URL:
        pytest.skip(NO_PG)
    await reset_postgres(PG_URL)
    return PG_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'palaver.db'}"


ManagerFactory = Callable[..., Awaitable[SessionManager]]


@pytest.fixture
async def make_manager(db_url: str) -> AsyncIterator[ManagerFactory]:
    """Build managers over ``db_url``; each call gets its own engines (as a second
    process would), and all are closed at the end of the test."""
    opened: list[tuple[SessionManager, Database]] = []

    async def make(
        *, summarizer: Summarizer | None = None, url: str | None = None, **settings: Any
    ) -> SessionManager:
        database = open_database(url or db_url, DatabaseSettings(busy_timeout_ms=10_000))
        await migrate(database)
        manager = SessionManager(
            Store(database), TokenCounter(), MemorySettings(**{**SMALL, **settings}), summarizer
        )
        await manager.start()
        opened.append((manager, database))
        return manager

    yield make
    for manager, database in opened:
        await manager.close()
        await database.dispose()


@pytest.fixture
async def manager(make_manager: ManagerFactory) -> SessionManager:
    return await make_manager()
