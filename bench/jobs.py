"""Benchmark: do turns stall while a job works? Prints a table.

    python bench/jobs.py [--messages 100000] [--sessions 100] [--rate 200]
                         [--batches 100,500,2000] [--postgres URL]

A turn here is what the conversation core does around the model at zero model
latency: resolve the chat's session, take its lock, store the user's message,
build the context, store the reply with its usage. Turns arrive open-loop at
``--rate`` a second (50: busy for a chat host, well within what one process serves
at zero model latency), spread over 50 chats with some history, so a stalled turn
delays the ones behind it instead of hiding them; each turn's latency is from its
arrival to its reply being stored.

For every cleanup batch size, ``--rounds`` times (the figures pool the rounds):
turns for a few seconds with no job ("idle"), then the same while the cleanup job
deletes ``--sessions`` expired sessions with ``--messages`` messages between them
("cleanup"), through the JobRunner as the scheduler runs it (lease, record); job
s, deleted and rows/s are per round. The loop-lag column is how late a 1 ms timer
fires at worst: the longest the event loop was held. Target: turn p99 <= 20 ms
while the job runs.
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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text, update

from bench.common import format_table, pct
from bots.app import freeze_startup_heap
from conversation.job_runner import JobRunner
from conversation.job_settings import JobsSettings
from conversation.jobs import JobRun
from memory.database import Database, migrate, open_database
from memory.manager import SessionManager
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import NewMessage, utcnow
from memory.store.rows import sessions
from memory.tokens import TokenCounter
from memory.types import ChatKey, Role, SessionStatus, Usage

CHATS = 50
SYSTEM = "You are Palaver, a helpful assistant in a chat. Answer clearly and concisely."


@dataclass
class Phase:
    latencies: list[float]
    lag: list[float]
    job_s: float = 0.0
    counts: dict[str, int] | None = None


async def build(url: str) -> tuple[SessionManager, Database]:
    database = open_database(url, DatabaseSettings())
    await migrate(database)
    from memory.store import Store

    manager = SessionManager(Store(database), TokenCounter(), MemorySettings())
    await manager.start()
    freeze_startup_heap()  # as run.py does once everything is up
    return manager, database


async def seed_expired(manager: SessionManager, sessions_n: int, messages_n: int, tag: str) -> None:
    """``sessions_n`` sessions holding ``messages_n`` messages between them, ended
    long enough ago to be past retention; written straight through the store."""
    store = manager.store
    per = messages_n // sessions_n
    for i in range(sessions_n):
        sid = (await manager.open(ChatKey("bench-old", f"{tag}-{i}"))).id
        for start in range(0, per, 1000):
            await store.messages.append(
                [
                    NewMessage(
                        sid,
                        Role.USER if j % 2 == 0 else Role.ASSISTANT,
                        f"old message {j} of session {i}: some ordinary chat text",
                        14,
                    )
                    for j in range(start, min(per, start + 1000))
                ]
            )
        await manager.record_tool_call(sid, "search")
    past = utcnow() - timedelta(seconds=manager.settings.retain_for_s + 86_400)
    async with store.db.writer.begin() as conn:
        await conn.execute(
            update(sessions)
            .where(sessions.c.chat_ref.like("bench-old:%"))
            .values(status=SessionStatus.EXPIRED, ended_at=past, last_activity_at=past)
        )


async def turn(manager: SessionManager, key: ChatKey, n: int) -> None:
    session = await manager.open(key)
    async with manager.lock(session.id):
        await manager.add_message(
            session.id,
            Role.USER,
            f"question {n}: what do you make of this?",
            author_id="1",
            chat=key,
            platform_message_id=str(n),
        )
        context = await manager.build_context(session.id, system_prompt=SYSTEM)
        await manager.add_reply(
            session.id,
            f"answer {n}: a plain reply of a few words.",
            context=context,
            model="bench",
            usage=Usage(context.estimated_tokens, 12, 0, 0, 0.0001),
            billed_to="bench:1",
        )


async def lag_monitor(sink: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        sink.append(time.perf_counter() - started - 0.001)


async def drive(
    manager: SessionManager,
    keys: list[ChatKey],
    rate: float,
    until: Callable[[], bool],
    first: int,
) -> tuple[list[float], int]:
    """Turns at ``rate`` a second until ``until()``; their latencies."""
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()

    async def timed(key: ChatKey, n: int, due: float) -> None:
        await turn(manager, key, n)
        latencies.append(time.perf_counter() - due)

    n = first
    start = time.perf_counter()
    while not until():
        due = start + (n - first) / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(timed(keys[n % len(keys)], n, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
    if pending:
        await asyncio.gather(*pending)
    return latencies, n


async def measure(
    manager: SessionManager,
    keys: list[ChatKey],
    rate: float,
    first: int,
    job: Callable[[], Coroutine[Any, Any, JobRun]] | None,
    seconds: float,
) -> tuple[Phase, int]:
    lag: list[float] = []
    stop = asyncio.Event()
    monitor = asyncio.create_task(lag_monitor(lag, stop))
    phase = Phase([], lag)
    if job is None:
        ends = time.perf_counter() + seconds

        def over() -> bool:
            return time.perf_counter() > ends

        phase.latencies, n = await drive(manager, keys, rate, over, first)
    else:
        started = time.perf_counter()
        task = asyncio.create_task(job())
        phase.latencies, n = await drive(manager, keys, rate, task.done, first)
        result = await task
        phase.job_s = time.perf_counter() - started
        phase.counts = result.counts
        if result.outcome != "ok":
            raise RuntimeError(f"the job failed: {result.error}")
    stop.set()
    await monitor
    return phase, n


def cleanup_of(runner: JobRunner) -> Callable[[], Coroutine[Any, Any, JobRun]]:
    def cleanup() -> Coroutine[Any, Any, JobRun]:
        return runner.run_now("cleanup")

    return cleanup


async def run(url: str, label: str, args: argparse.Namespace) -> list[list[str]]:
    manager, database = await build(url)
    keys = [ChatKey("bench", f"chat-{i}") for i in range(CHATS)]
    n = 0
    for key in keys:  # some history in every chat
        for _ in range(10):
            await turn(manager, key, n)
            n += 1
    rows: list[list[str]] = []
    for batch in args.batches:
        settings = JobsSettings(
            instance="bench", pause_ratio=args.pause_ratio, cleanup={"batch": batch}
        )
        runner = JobRunner(manager, settings)
        idle = Phase([], [])
        busy = Phase([], [], counts={})
        for round_ in range(args.rounds):
            await seed_expired(manager, args.sessions, args.messages, f"b{batch}r{round_}")
            gc.collect()  # the seeding's garbage is not the job's
            quiet, n = await measure(manager, keys, args.rate, n, None, args.idle_s)
            job, n = await measure(manager, keys, args.rate, n, cleanup_of(runner), 0)
            for into, phase in ((idle, quiet), (busy, job)):
                into.latencies += phase.latencies
                into.lag += phase.lag
                into.job_s += phase.job_s
            assert busy.counts is not None and job.counts is not None
            busy.counts["messages"] = busy.counts.get("messages", 0) + job.counts["messages"]
            async with database.reader.connect() as conn:
                left = (
                    await conn.execute(
                        text("SELECT count(*) FROM sessions WHERE status = 'expired'")
                    )
                ).scalar()
            assert left == 0, f"{left} expired sessions left after cleanup"
        for name, phase in (("idle", idle), ("cleanup", busy)):
            deleted = (phase.counts or {}).get("messages", 0)
            rows.append(
                [
                    label,
                    str(batch),
                    name,
                    f"{len(phase.latencies):,}",
                    f"{pct(phase.latencies, 0.5) * 1000:.2f}",
                    f"{pct(phase.latencies, 0.99) * 1000:.2f}",
                    f"{max(phase.latencies) * 1000:.1f}",
                    f"{max(phase.lag) * 1000:.1f}",
                    f"{phase.job_s / args.rounds:.1f}" if phase.job_s else "-",
                    f"{deleted // args.rounds:,}" if phase.job_s else "-",
                    f"{deleted / phase.job_s:,.0f}" if phase.job_s else "-",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)  # as it comes; the table at the end
    await manager.close()
    await database.dispose()
    return rows


HEAD = [
    "db",
    "batch",
    "phase",
    "turns",
    "p50 ms",
    "p99 ms",
    "max ms",
    "loop lag max ms",
    "job s",
    "deleted",
    "rows/s",
]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="turns per second")
    parser.add_argument("--idle-s", type=float, default=3.0, help="seconds of turns with no job")
    parser.add_argument("--rounds", type=int, default=3, help="cleanups per batch size, pooled")
    parser.add_argument(
        "--batches",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100, 500, 2000],
        help="cleanup batch sizes to compare (rows per transaction)",
    )
    parser.add_argument(
        "--pause-ratio",
        type=float,
        default=JobsSettings().pause_ratio,
        help="jobs.pause_ratio: pause after each batch, as a multiple of the batch's time",
    )
    parser.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL", ""))
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    print(
        f"# {platform.python_implementation()} {platform.python_version()} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs; {args.messages:,} messages in "
        f"{args.sessions} sessions deleted; turns at {args.rate:g}/s over {CHATS} chats; "
        f"jobs.pause_ratio {args.pause_ratio:g}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    rows: list[list[str]] = []
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            rows += await run(f"sqlite+aiosqlite:///{tmp}/bench.db", "sqlite", args)
    if args.postgres:
        from tests.conftest import reset_postgres

        await reset_postgres(args.postgres)
        rows += await run(args.postgres, "postgresql", args)
    print(format_table(HEAD, rows))
    print("target: turn p99 <= 20 ms while the cleanup job runs")


if __name__ == "__main__":
    asyncio.run(main())
