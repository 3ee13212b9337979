"""A per-user token bucket: ``per_minute`` sustained, ``burst`` at once.

Kept in process memory: it protects this process's model spend from one chatty
user, and a restart forgetting it is harmless.
"""

from __future__ import annotations

import time
from collections.abc import Hashable

from conversation.settings import RateLimitSettings


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


class Notices:
    """At most one notice per key and time window, so that no input makes the bot spam
    (a stranger told how to get in, a user told they are over the rate limit)."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._until: dict[Hashable, float] = {}

    def take(self, key: Hashable, window: float) -> bool:
        """True if a notice for ``key`` may go out now; then none for ``window`` s."""
        now = time.monotonic()
        if self._until.get(key, 0.0) > now:
            return False
        if len(self._until) >= self._size:
            self._until = {k: t for k, t in self._until.items() if t > now}
            while len(self._until) >= self._size:
                del self._until[next(iter(self._until))]
        self._until[key] = now + window
        return True
