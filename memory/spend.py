"""What each user has spent today, for the daily cap: read often, so cached.

A user's spend is re-read from the database at most every ``refresh_s`` seconds (so
spend by other processes shows within that time), plus this process's own spend as
it happens.
"""

from __future__ import annotations

import time
from datetime import datetime

from memory.store import Store, utcnow
from memory.types import Usage

_MAX_USERS = 10_000


class SpendTracker:
    def __init__(self, store: Store, refresh_s: float = 30.0) -> None:
        self._store = store
        self._refresh_s = refresh_s
        # billed_to -> (UTC day, USD, monotonic time read from the database)
        self._spend: dict[str, tuple[datetime, float, float]] = {}

    def charged(self, billed_to: str, usage: Usage) -> None:
        """A reply charged to ``billed_to`` was just stored."""
        cached = self._spend.get(billed_to)
        if cached is not None:
            self._spend[billed_to] = (cached[0], cached[1] + usage.cost_usd, cached[2])

    async def today(self, billed_to: str) -> float:
        """USD charged to ``billed_to`` since midnight UTC."""
        day = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
        cached = self._spend.get(billed_to)
        now = time.monotonic()
        if cached is not None and cached[0] == day and now - cached[2] < self._refresh_s:
            return cached[1]
        spent = await self._store.usage.spent(billed_to=billed_to, since=day)
        if len(self._spend) > _MAX_USERS:
            self._spend.clear()
        self._spend[billed_to] = (day, spent, now)
        return spent

    def prune(self) -> int:
        """Forget every cached figure (a job's upkeep); returns how many there were."""
        count = len(self._spend)
        self._spend.clear()
        return count
