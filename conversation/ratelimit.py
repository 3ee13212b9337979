"""A per-user token bucket: ``per_minute`` sustained, ``burst`` at once.

Kept in process memory: it protects this process's model spend from one chatty
user, and a restart forgetting it is harmless.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable

from conversation.settings import RateLimitSettings


class RateLimiter:
    """Buckets are kept least recently used first. A full bucket is the same as none,
    and a bucket left alone for ``burst / rate`` seconds is full, so each call forgets
    full buckets from the old end and stops at the first that is still refilling:
    at most one look that keeps, whatever the number of users, and only the users of
    the last ``burst / rate`` seconds are remembered.
    """

    def __init__(self, settings: RateLimitSettings) -> None:
        self._rate = settings.per_minute / 60.0
        self._burst = float(settings.burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """Users remembered (those whose bucket is still refilling, and the newest)."""
        return len(self._buckets)

    def acquire(self, key: str, now: float | None = None) -> float:
        """Take one token; return 0.0 if allowed, else the seconds until allowed."""
        now = time.monotonic() if now is None else now
        self._forget_full(now)
        # pop, then set: the key moves to the recently used end.
        tokens, stamp = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._rate

    def prune(self, now: float | None = None) -> int:
        """Forget the full buckets now (the prune job): a process that goes quiet
        otherwise keeps its last users until the next message."""
        before = len(self._buckets)
        self._forget_full(time.monotonic() if now is None else now)
        return before - len(self._buckets)

    def _forget_full(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            key, (tokens, stamp) = next(iter(buckets.items()))
            if tokens + (now - stamp) * self._rate < self._burst:
                return
            del buckets[key]


class Notices:
    """At most one notice per key and time window, so that no input makes the bot spam
    (a stranger told how to get in, a user told they are over the rate limit).

    At most ``size`` keys are remembered, oldest notice first: each call forgets
    expired ones from the old end, and at the cap the oldest, so a call costs the
    same with ten keys or ten thousand. Windows of different lengths share the
    order of their notices, so an expired key behind a longer-lived one waits for
    it (or for the cap) to be forgotten.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._until: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def take(self, key: Hashable, window: float, now: float | None = None) -> bool:
        """True if a notice for ``key`` may go out now; then none for ``window`` s."""
        now = time.monotonic() if now is None else now
        until = self._until
        if until.get(key, 0.0) > now:
            return False
        while until and (len(until) >= self._size or next(iter(until.values())) <= now):
            until.popitem(last=False)
        until[key] = now + window
        until.move_to_end(key)
        return True

    def prune(self, now: float | None = None) -> int:
        """Forget every lapsed window (the prune job), also those queued behind a
        longer-lived one, which ``take`` leaves for later."""
        now = time.monotonic() if now is None else now
        lapsed = [key for key, until in self._until.items() if until <= now]
        for key in lapsed:
            del self._until[key]
        return len(lapsed)
