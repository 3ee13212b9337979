"""Exports of a large session: how long the event loop is held and how much memory
the export takes.

    python bench/export.py [--messages 100000] [--formats json csv markdown]

One session of ``--messages`` messages (about 300 characters each, as a long chat's
would be) in a fresh SQLite database; then each format is exported with
``conversation.export.write_export`` while a ticker on the loop records the longest
gap between its ticks (a stall every chat would feel); the first row is the same
ticker on an idle loop, the machine's own noise. Memory is the peak that
tracemalloc saw during the export, in a second run of the same export (tracing
slows Python down, so the timing run is untraced).

Before the export moved to pages written off the loop, a 100,000-message session's
JSON export was built whole: 37 MB in memory and about 1 s of the loop held.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import format_table
from bots.app import freeze_startup_heap
from conversation.export import Format, write_export
from memory.database import migrate, open_database
from memory.manager import SessionManager
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import NewMessage, Store
from memory.tokens import TokenCounter
from memory.types import ChatKey, Role

TEXT = (
    "Here is what I found when I went through the logs from last night: the job started "
    "at 02:00 as planned, the first batch went through, and then the database answered "
    "slower and slower until the lock timed out. I think the index on messages is the "
    "culprit; can you look at the plan with me before we change anything? "
)


async def seed(manager: SessionManager, count: int) -> int:
    session = await manager.open(ChatKey("bench", "export"))
    for start in range(0, count, 1000):
        await manager.store.messages.append(
            [
                NewMessage(
                    session.id,
                    Role.USER if n % 2 == 0 else Role.ASSISTANT,
                    f"{n}: {TEXT}",
                    70,
                )
                for n in range(start, min(count, start + 1000))
            ]
        )
    return session.id


async def ticker(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def export_once(
    manager: SessionManager, session_id: int, kind: Format, directory: Path
) -> tuple[float, float, int]:
    """(seconds, longest loop gap in seconds, file size) of one export."""
    info = await manager.get(session_id)
    gaps: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(gaps, stop))
    started = time.perf_counter()
    path = await write_export(manager, info, kind, directory)
    elapsed = time.perf_counter() - started
    stop.set()
    await tick
    size = path.stat().st_size
    path.unlink()
    return elapsed, max(gaps, default=0.0), size


async def idle_stall() -> float:
    """The longest gap of the ticker with nothing else to do: the machine's own noise."""
    gaps: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(gaps, stop))
    await asyncio.sleep(2.0)
    stop.set()
    await tick
    return max(gaps, default=0.0)


async def traced_peak(
    manager: SessionManager, session_id: int, kind: Format, directory: Path
) -> int:
    info = await manager.get(session_id)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        path = await write_export(manager, info, kind, directory)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    path.unlink()
    return peak


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        database = open_database(f"sqlite+aiosqlite:///{root / 'bench.db'}", DatabaseSettings())
        await migrate(database)
        manager = SessionManager(Store(database), TokenCounter(), MemorySettings())
        await manager.start()
        freeze_startup_heap()  # as run.py does once everything is up
        try:
            session_id = await seed(manager, args.messages)
            rows = [["(idle loop, 2 s)", "-", "-", "-", f"{await idle_stall() * 1000:.1f} ms", "-"]]
            print(format_table(HEADERS, rows), flush=True)
            for kind in args.formats:
                elapsed, stall, size = await export_once(manager, session_id, kind, root)
                peak = await traced_peak(manager, session_id, kind, root)
                rows.append(
                    [
                        kind,
                        f"{args.messages:,}",
                        f"{size / 1e6:.1f} MB",
                        f"{elapsed:.2f} s",
                        f"{stall * 1000:.1f} ms",
                        f"{peak / 1e6:.1f} MB",
                    ]
                )
                print(format_table(HEADERS, rows[-1:]), flush=True)
            print()
            print(format_table(HEADERS, rows))
        finally:
            await manager.close()
            await database.dispose()


HEADERS = ["format", "messages", "file", "export", "longest loop stall", "peak memory (traced)"]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--formats", nargs="+", default=["json", "csv", "markdown"])
    asyncio.run(main(parser.parse_args()))
