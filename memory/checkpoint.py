"""WAL checkpoints off the write path.

SQLite's automatic checkpoint runs inside whichever commit pushes the WAL past
1,000 pages: that one commit copies the log into the database and syncs it, and
every add_message riding it waits ~10 ms. So the write connection turns automatic
checkpoints off, and this checkpointer runs a PASSIVE checkpoint on a read
connection (its own driver thread) shortly after writes. PASSIVE never takes the
write lock, so commits go on while it copies; once it has copied everything, the
next writer starts the WAL from the top again, which keeps the file bounded.

Under a steady stream of commits that never happens by itself: commits land while
the checkpoint copies, so it never reaches the end of the log, and the WAL grows
for as long as the stream lasts (160 MB after 50,000 messages in bench/memory.py).
So after the bulk copy the checkpointer chases the frames committed meanwhile,
then copies the last few on the write connection, between two transactions, where
no commit can slip in. The next commit then starts the log afresh.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

# Passes beside the writes before the last one on the write connection, and the
# frames a commit may wait on: a batch of 100 messages writes about 60.
_CHASES = 3
_FEW_FRAMES = 120


class WalCheckpointer:
    """Checkpoints the WAL ``interval_s`` after writes; idle databases cost nothing."""

    def __init__(self, reader: AsyncEngine, writer: AsyncEngine, interval_s: float = 0.5) -> None:
        self._reader = reader
        self._writer = writer
        self.interval_s = interval_s
        self._dirty = False
        self._wrote = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        # SQLite answers "busy" to a checkpoint while another one runs: this process's
        # checkpoints (these after writes, upkeep's truncation) take turns instead.
        self._one_at_a_time = asyncio.Lock()

    def note_write(self) -> None:
        """A write committed: checkpoint soon. Cheap enough for every commit."""
        self._dirty = True
        self._wrote = True
        if self._task is None and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # a synchronous caller (migrations): the next write will do
                return
            self._task = loop.create_task(self._run(), name="palaver-wal-checkpoint")

    async def checkpoint(
        self, mode: str = "PASSIVE", *, on_writer: bool = False
    ) -> tuple[int, int, int]:
        """Run one checkpoint: (busy, frames in the WAL, frames copied).

        ``on_writer`` runs it on the write connection, queued like a transaction,
        so that no commit lands while it copies; otherwise on a read connection,
        beside the commits.
        """
        engine = self._writer if on_writer else self._reader
        async with self._one_at_a_time, engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            # On the raw connection, outside any transaction: a checkpoint inside a
            # read transaction could not pass that reader's snapshot.
            cursor = await driver.execute(f"PRAGMA wal_checkpoint({mode})")
            row = await cursor.fetchone()
            await cursor.close()
        busy, frames, copied = row
        return int(busy), int(frames), int(copied)

    async def _run(self) -> None:
        try:
            while self._dirty and not self._closed:
                self._dirty = False
                await asyncio.sleep(self.interval_s)
                try:
                    await self._catch_up()
                except Exception as error:  # a locked or vanished file: try after the next write
                    log.debug("WAL checkpoint skipped: %s", error)
        finally:
            self._task = None

    async def _catch_up(self) -> None:
        """Copy the whole WAL into the database, so that the next commit restarts it."""
        _, frames, _ = await self.checkpoint()
        # Frames committed during the bulk copy: a second pass beside the writes
        # takes most of them, while it is still cheap for commits to wait on the rest.
        for _ in range(_CHASES):
            _, latest, _ = await self.checkpoint()
            if latest - frames <= _FEW_FRAMES:
                break
            frames = latest
        await self.checkpoint(on_writer=True)

    async def close(self) -> None:
        """Stop, and fold the whole WAL into the database if this process wrote."""
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._wrote:
            try:
                await self.checkpoint("TRUNCATE")
            except Exception as error:  # another process holds it; it will checkpoint
                log.debug("final WAL checkpoint skipped: %s", error)
