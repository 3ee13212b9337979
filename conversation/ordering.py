"""Order and concurrency: one chat's messages one at a time, in order; chats at once.

Platforms dispatch every event in a task of its own, so two quick messages from one
chat could race to the session lock and be stored and answered swapped. Each chat
(or thread) therefore has a lane: events enter it in the order the interface hands
them over, which is arrival order as long as the interface calls ``lane`` before
its first ``await`` (an uncontended ``asyncio.Lock`` is taken without yielding, and
waiters are served first come, first served).

``max_running`` bounds how many lanes run at once, applied once a lane's turn has
come: applied earlier, the messages queued behind one busy chat would hold every
slot and stall the other chats.

The lanes also know every turn in flight, which is how shutdown lets them finish
within a grace period and then cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable

log = logging.getLogger(__name__)


class ChatLanes:
    def __init__(self, max_running: int = 1024) -> None:
        self._running = asyncio.Semaphore(max_running)
        self._lanes: dict[Hashable, tuple[asyncio.Lock, int]] = {}
        self._inflight: set[asyncio.Task[object]] = set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @contextlib.asynccontextmanager
    async def lane(self, key: Hashable) -> AsyncIterator[None]:
        """Run the body in ``key``'s lane, after everything that entered it before."""
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        lock, users = self._lanes.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._lanes[key] = (lock, users + 1)
        try:
            async with lock, self._running:
                yield
        finally:
            self._inflight.discard(task)
            lock, users = self._lanes[key]
            if users <= 1:
                del self._lanes[key]
            else:
                self._lanes[key] = (lock, users - 1)

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the turns in flight; cancel the rest.

        Returns how many were cancelled. Their user messages are stored already,
        and a message stored but never answered is answered after the restart.
        """
        if not self._inflight:
            return 0
        _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "%d turns still running after %.0f s were cancelled; their messages are "
                "kept and will be answered after the restart",
                len(pending),
                grace,
            )
            await asyncio.wait(pending, timeout=5.0)
        return len(pending)
