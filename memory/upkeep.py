"""Database upkeep, run by a daily job: keep the planner's statistics fresh and the
SQLite write-ahead log bounded.

SQLite: ``PRAGMA optimize`` (with an ``analysis_limit``, so that it samples rather
than reads whole tables) on the write connection, where its ANALYZE may write;
``journal_size_limit`` on that connection, so that a WAL that grew during a burst is
cut back when it is next reset; then the WAL is folded into the database and
truncated: a PASSIVE checkpoint beside the writes first (it copies nearly all of
it without blocking anyone), then a TRUNCATE on the write connection, between two
transactions, where what is left is small (memory.checkpoint does the same after
writes, without the truncation).

PostgreSQL: ``ANALYZE`` of the tables every turn reads (autovacuum does the rest).
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import text

from memory.database import Database, translate_errors

# The tables every turn reads: their statistics decide the plans that matter.
HOT_TABLES = ("sessions", "messages", "summaries", "chat_bindings", "projects", "events")

# Rows ANALYZE samples per index when PRAGMA optimize decides to run it.
_ANALYSIS_LIMIT = 1000


def _sqlite_optimize(conn: sqlite3.Connection, journal_size_limit: int) -> None:
    """Runs on the write connection's thread, outside any transaction."""
    conn.execute(f"PRAGMA journal_size_limit={int(journal_size_limit)}")
    conn.execute(f"PRAGMA analysis_limit={_ANALYSIS_LIMIT}")
    conn.execute("PRAGMA optimize")


async def upkeep(database: Database, *, journal_size_limit: int) -> dict[str, int]:
    """One round of upkeep; returns counts (SQLite: the WAL's frames before the
    checkpoint, and whether it was truncated; PostgreSQL: tables analyzed)."""
    async with translate_errors():
        if database.fast is not None and database.checkpointer is not None:
            await database.fast.on_writer(_sqlite_optimize, journal_size_limit)
            _busy, frames, _copied = await database.checkpointer.checkpoint("PASSIVE")
            busy, _, _ = await database.checkpointer.checkpoint("TRUNCATE", on_writer=True)
            # busy: a reader on an old snapshot kept the log from being truncated.
            return {"optimized": 1, "wal_frames": frames, "truncated": 0 if busy else 1}
        async with database.writer.connect() as conn:
            await conn.execute(text(f"ANALYZE {', '.join(HOT_TABLES)}"))
            await conn.commit()
        return {"analyzed": len(HOT_TABLES)}
