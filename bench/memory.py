"""Benchmark of the session memory: prints a table.

    python bench/memory.py [--sessions 100] [--messages 100] [--postgres URL]

- ingest: S sessions x M messages, one add_message per call, all sessions
  concurrently, each call committed before it returns (SQLite file, WAL); five
  rounds on fresh sessions, the median round reported with the spread;
- context: build_context for 100 sessions of 2,000 messages with summaries, from
  the cache and cold from the database;
- memory: RSS for 10,000 cached sessions of 20 short messages, bytes per session
  beyond the message text;
- the same ingest on PostgreSQL when --postgres or TEST_DATABASE_URL is given.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.engine import make_url

from bench.common import format_table, pct
from bots.app import freeze_startup_heap
from memory.database import Database, migrate, open_database
from memory.manager import SessionManager
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import Store
from memory.tokens import TokenCounter
from memory.types import ChatKey, Role

Row = tuple[str, str, str, str]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def build(url: str, **settings: object) -> tuple[SessionManager, Database]:
    database = open_database(url, DatabaseSettings())
    await migrate(database)
    manager = SessionManager(Store(database), TokenCounter(), MemorySettings(**settings))
    await manager.start()
    freeze_startup_heap()  # as run.py does once everything is up
    return manager, database


async def ingest_round(
    manager: SessionManager, sessions: int, messages: int, label: str
) -> tuple[float, list[float]]:
    """One round on fresh sessions: (messages/s, add_message latencies)."""
    keys = [ChatKey("bench", f"{label}-{i}") for i in range(sessions)]
    ids = [(await manager.open(key)).id for key in keys]
    latencies: list[float] = []

    async def writer(index: int, sid: int) -> None:
        for j in range(messages):
            started = time.perf_counter()
            await manager.add_message(
                sid,
                Role.USER if j % 2 == 0 else Role.ASSISTANT,
                f"message {j} in session {index}: the quick brown fox jumps over the lazy dog",
                chat=keys[index],
                platform_message_id=f"{j}",
            )
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(writer(i, sid) for i, sid in enumerate(ids)))
    elapsed = time.perf_counter() - started
    stored = sum([(await manager.get(sid)).message_count for sid in ids])
    assert stored == sessions * messages, f"stored {stored} of {sessions * messages}"
    return sessions * messages / elapsed, latencies


async def ingest(url: str, sessions: int, messages: int, rounds: int, label: str) -> list[Row]:
    """``rounds`` rounds into one growing database; the median round is reported.

    A round lasts about half a second, short enough for a noisy neighbour on a
    shared VM to move one round by a third, so the table shows the spread too.
    The targets are the SQLite file's; PostgreSQL's figures are for comparison.
    """
    manager, database = await build(url)
    results = [
        await ingest_round(manager, sessions, messages, f"{label}-r{r}") for r in range(rounds)
    ]
    # Without the checkpointer starting it over, the WAL would hold every round.
    wal = Path(f"{make_url(url).database}-wal") if database.is_sqlite else None
    wal_bytes = wal.stat().st_size if wal is not None and wal.exists() else 0
    await manager.close()
    await database.dispose()
    results.sort(key=lambda r: r[0])
    rate, latencies = results[len(results) // 2]
    spread = f"{results[0][0]:,.0f} .. {results[-1][0]:,.0f}"
    rate_target, p99_target = (">= 20,000", "<= 10 ms") if wal is not None else ("-", "-")
    rows = [
        (f"ingest {label}", f"messages/s (median of {rounds})", f"{rate:,.0f}", rate_target),
        (f"ingest {label}", "messages/s, slowest .. fastest", spread, ""),
        (f"ingest {label}", "add_message p50", f"{pct(latencies, 0.5) * 1000:.2f} ms", ""),
        (f"ingest {label}", "add_message p99", f"{pct(latencies, 0.99) * 1000:.2f} ms", p99_target),
    ]
    if wal is not None:
        rows.append((f"ingest {label}", "WAL file at the end", f"{wal_bytes / 2**20:.1f} MiB", ""))
    return rows


async def context(url: str) -> list[Row]:
    # "From the cache" means no database round trip: version checks are kept out.
    manager, database = await build(
        url, token_limit=100_000, cache_size=1000, cache_verify_after_s=3600
    )
    store = manager.store
    ids: list[int] = []
    # Seed 100 sessions x 2,000 messages with summaries straight through the store.
    from memory.store import NewMessage

    for i in range(100):
        sid = (await manager.open(ChatKey("bench", f"ctx-{i}"))).id
        ids.append(sid)
        items = [
            NewMessage(
                sid,
                Role.USER if j % 2 == 0 else Role.ASSISTANT,
                f"turn {j}: some ordinary chat text about the project, number {j}",
                18,
            )
            for j in range(2000)
        ]
        for k in range(0, 2000, 500):
            await store.messages.append(items[k : k + 500])
        through = 0
        for _ in range(6):  # six summaries covering 1..1800
            await store.summaries.add(
                sid,
                expected_through=through,
                first_seq=through + 1,
                last_seq=through + 300,
                text="summary " * 300,
                token_count=300,
                summarizer="bench",
                fallback=False,
            )
            through += 300
    cold: list[float] = []
    cold_at_once: list[float] = []
    warm: list[float] = []

    async def one(sid: int, sink: list[float]) -> None:
        started = time.perf_counter()
        await manager.build_context(sid, system_prompt="You are helpful.", budget=100_000)
        sink.append(time.perf_counter() - started)

    manager.cache.clear()
    for sid in ids:  # cold, one at a time: the latency of a single cache miss
        await one(sid, cold)
    manager.cache.clear()
    await asyncio.gather(*(one(sid, cold_at_once) for sid in ids))  # 100 misses at once
    await asyncio.gather(*(one(sid, []) for sid in ids))  # re-verify versions, untimed
    for _ in range(10):
        await asyncio.gather(*(one(sid, warm) for sid in ids))
    await manager.close()
    await database.dispose()
    return [
        ("context (cache)", "build_context p50", f"{pct(warm, 0.5) * 1000:.3f} ms", ""),
        ("context (cache)", "build_context p99", f"{pct(warm, 0.99) * 1000:.3f} ms", "<= 1 ms"),
        ("context (cold)", "build_context p50", f"{pct(cold, 0.5) * 1000:.2f} ms", ""),
        ("context (cold)", "build_context p99", f"{pct(cold, 0.99) * 1000:.2f} ms", "<= 20 ms"),
        ("context (cold, 100 at once)", "p50", f"{pct(cold_at_once, 0.5) * 1000:.1f} ms", ""),
        ("context (cold, 100 at once)", "p99", f"{pct(cold_at_once, 0.99) * 1000:.1f} ms", ""),
    ]


async def memory_use(url: str) -> list[Row]:
    from memory.store import NewMessage

    manager, database = await build(url, cache_size=20_000)
    store = manager.store
    ids = []
    text_bytes = 0
    for i in range(10_000):
        sid = (await manager.open(ChatKey("bench", f"mem-{i}"))).id
        ids.append(sid)
    batch: list[NewMessage] = []
    for sid in ids:
        for j in range(20):
            text = f"short message {j} of {sid}"
            batch.append(NewMessage(sid, Role.USER, text, 6))
        if len(batch) >= 2000:
            await store.messages.append(batch)
            batch = []
    if batch:
        await store.messages.append(batch)
    manager.cache.clear()
    gc.collect()
    before = rss_bytes()
    for sid in ids:
        await manager.build_context(sid)  # loads the session into the cache
        entry = manager.cache.peek(sid)
        assert entry is not None
        text_bytes += sum(sys.getsizeof(message[2]) for message in entry.tail)
    gc.collect()
    after = rss_bytes()
    per_session = (after - before - text_bytes) / len(ids)
    cached = len(manager.cache)
    await manager.close()
    await database.dispose()
    return [
        ("memory", "RSS growth, 10,000 sessions", f"{(after - before) / 2**20:.1f} MiB", ""),
        ("memory", "cached sessions", f"{cached:,}", ""),
        ("memory", "bytes/session beyond text", f"{per_session:,.0f}", "<= 3,072"),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL", ""))
    parser.add_argument("--only", choices=["ingest", "context", "memory"], default=None)
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        if args.only in (None, "ingest"):
            rows += await ingest(url, args.sessions, args.messages, args.rounds, "sqlite")
        if args.only in (None, "context"):
            rows += await context(f"sqlite+aiosqlite:///{tmp}/ctx.db")
        if args.only in (None, "memory"):
            rows += await memory_use(f"sqlite+aiosqlite:///{tmp}/mem.db")
    if args.postgres and args.only in (None, "ingest"):
        from tests.conftest import reset_postgres

        await reset_postgres(args.postgres)
        rows += await ingest(args.postgres, args.sessions, args.messages, args.rounds, "postgresql")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}"
    )
    print(format_table(("case", "measure", "value", "target"), rows))


if __name__ == "__main__":
    asyncio.run(main())
