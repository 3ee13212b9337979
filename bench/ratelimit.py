"""Per-call cost of the rate limiter and the notices as users pile up: prints a table.

    python bench/ratelimit.py [--users 1000 10000 100000]

- acquire, all active: every user comes back once every 3 s (20 a minute, burst 5), so
  every call is allowed and no bucket is ever full again: nothing can be forgotten;
- acquire, churn: a new user every millisecond, none returns (buckets refill in 15 s);
- notice at the cap: Notices(size=N) full of keys still within their window, then
  new keys, each of which makes room.

The clock is passed in, so only the bookkeeping is timed. Each row runs for about
half a second and reports the mean per call.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import format_table
from conversation.ratelimit import Notices, RateLimiter
from conversation.settings import RateLimitSettings

SETTINGS = RateLimitSettings(per_minute=20, burst=5)
BUDGET_S = 0.5


def per_call_us(step: Callable[[int], object]) -> tuple[float, int]:
    """Mean microseconds per ``step(i)`` over about BUDGET_S, and how many calls ran."""
    calls, started = 0, time.perf_counter()
    while True:
        for i in range(calls, calls + 100):
            step(i)
        calls += 100
        elapsed = time.perf_counter() - started
        if elapsed >= BUDGET_S:
            return elapsed / calls * 1e6, calls


def acquire_all_active(users: int) -> tuple[float, int]:
    limiter = RateLimiter(SETTINGS)
    spacing = 3.0 / users  # one round of every user takes 3 s: one token back each
    for i in range(users):
        limiter.acquire(f"u{i}", i * spacing)
    start = users

    def step(i: int) -> None:
        if limiter.acquire(f"u{i % users}", (start + i) * spacing) != 0.0:
            raise AssertionError("the scenario is meant to allow every call")

    return per_call_us(step)


def acquire_churn(users: int) -> tuple[float, int]:
    limiter = RateLimiter(SETTINGS)
    for i in range(users):
        limiter.acquire(f"u{i}", 0.0)  # ``users`` buckets, all refilling at once

    def step(i: int) -> None:
        limiter.acquire(f"new{i}", 0.001 * (i + 1))

    return per_call_us(step)


def notice_at_cap(users: int) -> tuple[float, int]:
    notices = Notices(size=users)
    for i in range(users):
        notices.take(i, 3600.0, now=0.0)

    def step(i: int) -> None:
        notices.take(f"new{i}", 3600.0, now=1.0 + i * 1e-6)

    return per_call_us(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    args = parser.parse_args()
    rows = []
    for users in args.users:
        for name, scenario in (
            ("acquire, all active", acquire_all_active),
            ("acquire, churn", acquire_churn),
            ("notice at the cap", notice_at_cap),
        ):
            us, calls = scenario(users)
            rows.append([name, f"{users:,}", f"{us:.2f}", f"{calls:,}"])
    print(format_table(["scenario", "users", "us/call", "calls timed"], rows))


if __name__ == "__main__":
    main()
