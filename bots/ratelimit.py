"""A per-user token bucket: ``per_minute`` sustained, ``burst`` at once.

Kept in process memory: it protects this process's model spend from one chatty
user, and a restart forgetting it is harmless.
"""

from __future__ import annotations

import time

from bots.config import RateLimitSettings


class RateLimiter:
    _PRUNE_AT = 10_000

    def __init__(self, settings: RateLimitSettings) -> None:
        self._rate = settings.per_minute / 60.0
        self._burst = float(settings.burst)
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, key: str, now: float | None = None) -> float:
        """Take one token; return 0.0 if allowed, else the seconds until allowed."""
        now = time.monotonic() if now is None else now
        tokens, stamp = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self._PRUNE_AT:
                self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._rate

    def _prune(self, now: float) -> None:
        full = [
            k for k, (t, s) in self._buckets.items() if t + (now - s) * self._rate >= self._burst
        ]
        for key in full:
            del self._buckets[key]
