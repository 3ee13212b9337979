"""The per-user token bucket and the one-per-window notices: same answers as a bucket
that never forgets, bounded memory, and work per call that does not grow with users.

Work is counted in executed lines (``sys.settrace``), not timed: the figures per
call live in bench/ratelimit.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from conversation.ratelimit import Notices, RateLimiter
from conversation.settings import RateLimitSettings


class Remembering:
    """The token bucket by its definition: every user's bucket kept for ever."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, key: str, now: float) -> float:
        tokens, stamp = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def lines_run(call: Callable[[], Any]) -> int:
    """How many lines of Python ``call`` executes, comprehensions included."""
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


@settings(max_examples=300, deadline=None)
@given(
    per_minute=st.sampled_from([1.0, 20.0, 600.0]),
    burst=st.integers(1, 6),
    calls=st.lists(
        st.tuples(st.integers(0, 7), st.floats(0.0, 40.0, allow_nan=False)), max_size=200
    ),
)
def test_answers_equal_a_bucket_that_never_forgets(
    per_minute: float, burst: int, calls: list[tuple[int, float]]
) -> None:
    limiter = RateLimiter(RateLimitSettings(per_minute=per_minute, burst=burst))
    reference = Remembering(per_minute, burst)
    now = 0.0
    for user, pause in calls:
        now += pause
        assert limiter.acquire(f"u{user}", now) == reference.acquire(f"u{user}", now)


def test_answers_stay_equal_past_ten_thousand_users() -> None:
    limiter = RateLimiter(RateLimitSettings(per_minute=20, burst=5))
    reference = Remembering(20, 5)
    now = 0.0
    for i in range(60_000):
        now += 0.0007
        user = f"u{(i * 7919) % 25_000}"  # every user comes back, some within the window
        assert limiter.acquire(user, now) == reference.acquire(user, now)


def test_memory_is_bounded_by_the_users_of_one_refill() -> None:
    """A bucket unused for burst / rate seconds is full, the same as none: only users
    seen within that long are kept, however many came before."""
    limiter = RateLimiter(RateLimitSettings(per_minute=20, burst=5))  # 15 s to refill
    now = 0.0
    for i in range(200_000):
        now += 0.001  # 1,000 new users a second: 15,000 within one refill
        limiter.acquire(f"u{i}", now)
        assert len(limiter) <= 15_001


def test_work_per_call_does_not_grow_with_users() -> None:
    """Past 10,000 users who are all still refilling, nothing can be forgotten, and
    each call must not look at every bucket again."""
    limiter = RateLimiter(RateLimitSettings(per_minute=20, burst=5))
    now = 0.0
    for i in range(20_000):
        now += 0.0001  # all within 2 s: none refilled
        limiter.acquire(f"u{i}", now)
    assert len(limiter) == 20_000
    work = [lines_run(partial(limiter.acquire, f"new{i}", now + i * 1e-4)) for i in range(50)]
    assert max(work) <= 30, work


def test_a_notice_goes_out_once_per_window() -> None:
    notices = Notices()
    assert notices.take("ann", 60, now=0.0)
    assert notices.take("bob", 10, now=30.0)
    assert not notices.take("bob", 10, now=39.0)
    assert notices.take("bob", 10, now=40.5)  # a shorter window behind a longer one
    assert not notices.take("bob", 10, now=50.4)
    assert not notices.take("ann", 60, now=59.9)
    assert notices.take("ann", 60, now=60.1)
    assert notices.take("bob", 10, now=60.2)


def test_notices_stay_bounded_and_forget_the_oldest_first() -> None:
    notices = Notices(size=1000)
    for i in range(5000):
        assert notices.take(i, 3600, now=float(i))
        assert len(notices) <= 1000
    assert not notices.take(4999, 3600, now=5000.0)  # the newest are remembered
    assert notices.take(0, 3600, now=5000.0)  # the oldest made room


def test_notice_work_per_call_does_not_grow_at_the_cap() -> None:
    notices = Notices(size=10_000)
    for i in range(10_000):
        notices.take(i, 3600, now=float(i) / 1000)  # all still within their window
    work = [lines_run(partial(notices.take, f"new{i}", 3600, now=11.0)) for i in range(50)]
    assert max(work) <= 30, work


def test_prune_forgets_what_lapsed_while_the_process_was_quiet() -> None:
    """The prune job: nobody wrote since, yet full buckets and lapsed windows go;
    what is still refilling or within its window stays, and answers as before."""
    limiter = RateLimiter(RateLimitSettings(per_minute=60, burst=3))  # 3 s to refill
    reference = Remembering(per_minute=60, burst=3)
    for user, at in (("early", 0.0), ("late", 2.5)):
        for _ in range(3):
            assert limiter.acquire(user, at) == reference.acquire(user, at)
    assert limiter.prune(now=4.0) == 1  # early is full again; late still refills
    assert len(limiter) == 1
    assert limiter.prune(now=4.0) == 0
    assert limiter.acquire("late", 4.0) == reference.acquire("late", 4.0)

    notices = Notices()
    assert notices.take("long", 600, now=0.0)
    assert notices.take("short", 10, now=1.0)  # behind a longer window: take() waits
    assert notices.take("other", 10, now=20.0)
    assert len(notices) == 3
    assert notices.prune(now=25.0) == 1  # "short" lapsed at 11
    assert not notices.take("long", 600, now=25.0) and not notices.take("other", 10, now=25.0)
    assert notices.prune(now=700.0) == 2
    assert len(notices) == 0
