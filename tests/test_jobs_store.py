"""Job runs and leases in the store, and migration 0009: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from memory.database import MIGRATIONS, Database, migrate, open_database
from memory.models import Base
from memory.settings import DatabaseSettings
from memory.store import Store, utcnow


@pytest.fixture
async def stores(db_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores over one database, each with its own engines (two processes)."""
    databases: list[Database] = []
    for _ in range(2):
        database = open_database(db_url, DatabaseSettings(busy_timeout_ms=10_000))
        await migrate(database)
        databases.append(database)
    yield Store(databases[0]), Store(databases[1])
    for database in databases:
        await database.dispose()


def _diff(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def _to(revision: str, down: bool) -> Any:
    def run(conn: Connection) -> None:
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)

    return run


async def test_the_migrations_build_the_models_schema_and_0009_goes_back(
    stores: tuple[Store, Store],
) -> None:
    db = stores[0].db
    async with db.writer.connect() as conn:
        assert await conn.run_sync(_diff) == []
    async with db.writer.begin() as conn:
        await conn.run_sync(_to("0008", down=True))
    async with db.writer.connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        columns = await conn.run_sync(lambda c: inspect(c).get_columns("job_runs"))
    assert "job_leases" not in tables and "instance" not in {c["name"] for c in columns}
    async with db.writer.begin() as conn:
        await conn.run_sync(_to("head", down=False))
    async with db.writer.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_a_lease_is_taken_once_renewed_by_its_holder_and_free_when_let_go(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    now = utcnow()
    minute = timedelta(minutes=1)
    assert await a.jobs.take_lease("cleanup", "a", now=now, until=now + minute)
    assert not await b.jobs.take_lease("cleanup", "b", now=now, until=now + minute)
    assert not await a.jobs.take_lease("cleanup", "a", now=now, until=now + minute)  # held
    assert await a.jobs.renew_lease("cleanup", "a", until=now + 2 * minute)
    assert not await b.jobs.renew_lease("cleanup", "b", until=now + 2 * minute)
    # Past the first expiry, the renewed lease still holds.
    at = now + timedelta(seconds=90)
    assert not await b.jobs.take_lease("cleanup", "b", now=at, until=at + minute)
    # Other jobs have leases of their own.
    assert await b.jobs.take_lease("expire", "b", now=now, until=now + minute)
    await a.jobs.release_lease("cleanup", "a", now=now + minute)
    leases = await b.jobs.leases()
    assert (leases["cleanup"].holder, leases["cleanup"].finished_at) == ("a", now + minute)
    assert leases["expire"].finished_at is None
    # Let go: free at once. A scheduled take skips it while its last run is recent.
    later = now + minute
    recently = later - timedelta(seconds=30)
    assert not await b.jobs.take_lease(
        "cleanup", "b", now=later, until=later + minute, not_started_since=now - minute
    )
    assert await b.jobs.take_lease(
        "cleanup", "b", now=later, until=later + minute, not_started_since=recently
    )
    assert (await a.jobs.leases())["cleanup"].holder == "b"


async def test_racing_instances_take_a_free_lease_once(stores: tuple[Store, Store]) -> None:
    a, b = stores
    now = utcnow()
    for round_, job in enumerate(["finalize", "finalize", "upkeep"]):
        at = now + timedelta(minutes=10 * round_)  # each round after the last expired
        takes = [
            store.jobs.take_lease(job, f"{name}{i}", now=at, until=at + timedelta(minutes=5))
            for i in range(5)
            for name, store in (("a", a), ("b", b))
        ]
        assert sum(await asyncio.gather(*takes)) == 1


async def test_runs_are_recorded_listed_and_deleted_by_age(stores: tuple[Store, Store]) -> None:
    a, b = stores
    now = utcnow()
    old = await a.jobs.start("cleanup", "a", now=now - timedelta(days=40))
    await a.jobs.finish(old, "ok", {"sessions": 2}, now=now - timedelta(days=40))
    stuck = await a.jobs.start("cleanup", "a", now=now - timedelta(days=40))  # still running
    new = await b.jobs.start("cleanup", "b", now=now)
    await b.jobs.finish(new, "failed", {"sessions": 1}, "the database failed", now=now)
    skipped = await b.jobs.record("expire", "b", "skipped", now=now, error="held by a")
    latest = await a.jobs.latest(["cleanup", "expire", "upkeep"])
    assert sorted(latest) == ["cleanup", "expire"]
    assert (latest["cleanup"].id, latest["cleanup"].outcome) == (new, "failed")
    assert (latest["cleanup"].counts, latest["cleanup"].error) == (
        {"sessions": 1},
        "the database failed",
    )
    assert (latest["expire"].id, latest["expire"].finished_at) == (skipped, now)
    assert [r.id for r in await a.jobs.history("cleanup")] == [new, stuck, old]
    assert await a.jobs.delete_before("cleanup", now - timedelta(days=30), limit=10) == 1
    assert [r.id for r in await a.jobs.history("cleanup")] == [new, stuck]
