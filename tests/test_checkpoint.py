"""WAL checkpoints run beside writes, not inside a commit (memory.checkpoint)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from memory.database import Database, migrate, open_database
from memory.manager import SessionManager
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import Store
from memory.tokens import TokenCounter
from memory.types import ChatKey, Role

PAGE = 4096


def size(path: Path | str) -> int:
    """Bytes in ``path``; 0 once SQLite has removed it (the WAL, on the last close)."""
    path = Path(path)
    return path.stat().st_size if path.exists() else 0


TEXT = "a line of chat that fills pages " * 40


async def _write(path: Path, interval_s: float) -> tuple[Database, SessionManager, int]:
    """Open a manager, empty the WAL, then store ~1,500 pages of messages."""
    database = open_database(f"sqlite+aiosqlite:///{path}", DatabaseSettings())
    assert database.checkpointer is not None
    database.checkpointer.interval_s = interval_s  # before the first write schedules one
    await migrate(database)
    manager = SessionManager(Store(database), TokenCounter(), MemorySettings())
    await manager.start()
    await database.checkpointer.checkpoint("TRUNCATE")
    size_before = size(path)
    session = await manager.open(ChatKey("test", "wal"))
    await asyncio.gather(
        *(manager.add_message(session.id, Role.USER, f"{i} {TEXT}") for i in range(3000))
    )
    return database, manager, size_before


async def test_no_commit_checkpoints_and_closing_empties_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "palaver.db"
    database, manager, size_before = await _write(path, interval_s=60)
    # Past SQLite's automatic threshold of 1,000 pages, and no commit copied any of it.
    assert size(f"{path}-wal") > 1000 * PAGE
    assert size(path) == size_before
    await manager.close()
    await database.dispose()
    assert size(f"{path}-wal") == 0
    assert size(path) > size_before + 1000 * PAGE
    with sqlite3.connect(path) as plain:
        assert plain.execute("SELECT count(*) FROM messages").fetchone() == (3000,)


async def test_the_checkpointer_copies_the_wal_soon_after_writes(tmp_path: Path) -> None:
    path = tmp_path / "palaver.db"
    database, manager, size_before = await _write(path, interval_s=0.05)
    try:
        for _ in range(100):
            if size(path) > size_before + 1000 * PAGE:
                break
            await asyncio.sleep(0.05)
        assert size(path) > size_before + 1000 * PAGE
        await asyncio.sleep(0.3)
        assert database.checkpointer is not None
        assert database.checkpointer._task is None  # idle again: no wake-ups without writes
    finally:
        await manager.close()
        await database.dispose()


def wal_generation(path: Path | str) -> tuple[int, int] | None:
    """The WAL header's checkpoint sequence number and first salt, or None without a log.

    The writer that starts the log over writes a new header with both incremented
    (https://sqlite.org/fileformat2.html#walformat), so a change means a restart.
    """
    try:
        with open(path, "rb") as wal:
            header = wal.read(32)
    except FileNotFoundError:
        return None
    if len(header) < 32:
        return None
    return int.from_bytes(header[12:16], "big"), int.from_bytes(header[16:20], "big")


async def test_the_wal_starts_over_while_writes_never_pause(tmp_path: Path) -> None:
    """A checkpoint beside a stream of commits never sees the log's end, so SQLite
    would append to the WAL for ever; the checkpointer must let it start over.

    Counted in restarts of the log (its header), not in bytes per second: fifty
    writers keep commits landing without a pause while the test runs checkpoint
    cycles itself, and after each cycle the next commit must start the log over.
    """
    path = tmp_path / "palaver.db"
    wal = f"{path}-wal"
    # Checkpoint cycles are the test's to run: the timer never fires on its own.
    database, manager, _ = await _write(path, interval_s=3600)
    checkpointer = database.checkpointer
    assert checkpointer is not None
    session = await manager.open(ChatKey("test", "stream"))
    written, floor = 0, 0
    streaming = True
    reached = asyncio.Event()

    async def stream() -> None:
        nonlocal written
        while streaming:
            await manager.add_message(session.id, Role.USER, f"{written} {TEXT}")
            written += 1
            if written >= floor:
                reached.set()

    writers = [asyncio.create_task(stream()) for _ in range(50)]
    try:
        for cycle in range(3):
            # Enough in the log that copying it takes a while, with commits landing.
            floor = written + 1000
            reached.clear()
            await reached.wait()
            before = wal_generation(wal)
            await checkpointer._catch_up()
            # A commit that begins now, with the log fully copied, starts it over.
            await manager.add_message(session.id, Role.USER, f"after cycle {cycle}")
            assert wal_generation(wal) != before, f"no restart after cycle {cycle}"
    finally:
        streaming = False
        await asyncio.gather(*writers)
        await manager.close()
        await database.dispose()
