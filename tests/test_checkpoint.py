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


async def test_the_wal_starts_over_while_writes_never_pause(tmp_path: Path) -> None:
    """A checkpoint beside a stream of commits never sees the log's end, so SQLite
    would append to the WAL for ever; the checkpointer must let it start over."""
    path = tmp_path / "palaver.db"
    database, manager, _ = await _write(path, interval_s=0.02)
    try:
        session = await manager.open(ChatKey("test", "stream"))
        written = 0
        deadline = asyncio.get_running_loop().time() + 1.5
        while asyncio.get_running_loop().time() < deadline:
            texts = [f"{written + i} {TEXT}" for i in range(50)]
            await asyncio.gather(*(manager.add_message(session.id, Role.USER, t) for t in texts))
            written += len(texts)
        text_bytes = written * len(TEXT)
        # Every message is in some WAL frame at least once: a log that never started
        # over would hold them all. One that does holds a few intervals' worth.
        assert text_bytes > 3000 * PAGE
        assert size(f"{path}-wal") < text_bytes / 3
    finally:
        await manager.close()
        await database.dispose()
