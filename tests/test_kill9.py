"""kill -9 in the middle of writes loses nothing that was acknowledged.

A child process appends through the SessionManager, eight writers at once, and
prints each message's tag and sequence number once add_message has returned (the
acknowledgement). The parent kills it with SIGKILL after a random number of
acknowledgements, five times, restarting it each time on the same database. Then
every acknowledged message is there exactly once at its sequence number, the
sequence numbers run 1..N without a gap, and the session's counters equal the sum
of its messages. Kills are counted in acknowledgements, never in seconds, so the
test is the same on a fast machine and a slow one.

The child is this module run as ``python -m tests.test_kill9`` (the database URL in
the environment, not in its arguments).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

from memory.database import migrate, open_database
from memory.manager import SessionManager
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import Store
from memory.tokens import TokenCounter
from memory.types import ChatKey, Role, Usage

ROOT = Path(__file__).resolve().parent.parent
KEY = ChatKey("test", "kill9")
ROUNDS = 5
WRITERS = 8
FILLER = "words that make a message a few dozen tokens long, " * 3


def usage_of(index: int) -> Usage:
    """A reply's usage, different for each message so that sums can be checked."""
    return Usage(100 + index % 7, 1 + index % 13, index % 3, index % 5, 0.001 * (index % 11))


async def child(url: str, round_no: int) -> None:
    database = open_database(url, DatabaseSettings(busy_timeout_ms=30_000))
    await migrate(database)
    manager = SessionManager(Store(database), TokenCounter(), MemorySettings())
    await manager.start()
    session = await manager.open(KEY)
    print(f"ready {session.id}", flush=True)
    counter = 0

    async def writer() -> None:
        nonlocal counter
        while True:
            index, counter = counter, counter + 1
            tag = f"r{round_no}-{index}"
            reply = index % 2 == 1
            stored = await manager.add_message(
                session.id,
                Role.ASSISTANT if reply else Role.USER,
                f"{tag} {FILLER}",
                usage=usage_of(index) if reply else None,
                billed_to="test:kill9" if reply else None,
            )
            sys.stdout.write(f"ack {tag} {stored.seq}\n")
            sys.stdout.flush()

    await asyncio.gather(*(writer() for _ in range(WRITERS)))


async def run_round(url: str, round_no: int, kill_after: int) -> dict[str, int]:
    """One child: wait for ``kill_after`` acknowledgements, SIGKILL it, and return
    every acknowledgement it printed (those still in the pipe included)."""
    env = {**os.environ, "KILL9_DATABASE_URL": url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.test_kill9",
        str(round_no),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    acked: dict[str, int] = {}
    try:
        async with asyncio.timeout(60):  # a hang, not a measure: kills count acks
            ready = await proc.stdout.readline()
            assert ready.startswith(b"ready "), ready
            while len(acked) < kill_after:
                line = await proc.stdout.readline()
                assert line.endswith(b"\n"), f"the child ended early: {line!r}"
                _, tag, seq = line.decode().split()
                acked[tag] = int(seq)
            proc.send_signal(signal.SIGKILL)
            rest = await proc.stdout.read()
            assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for text in rest.decode().split("\n")[:-1]:  # a line cut by the kill is not counted
        _, tag, seq = text.split()
        acked[tag] = int(seq)
    return acked


async def test_kill_9_loses_nothing_acknowledged(db_url: str) -> None:
    rng = random.Random(1309)
    acked: dict[str, int] = {}
    for round_no in range(ROUNDS):
        acked.update(await run_round(db_url, round_no, kill_after=rng.randint(20, 400)))

    database = open_database(db_url, DatabaseSettings(busy_timeout_ms=30_000))
    manager = SessionManager(Store(database), TokenCounter(), MemorySettings())
    await manager.start()
    try:
        session = await manager.find_by_chat(KEY)
        assert session is not None
        messages = await manager.messages(session.id)
        info = await manager.get(session.id)
    finally:
        await manager.close()
        await database.dispose()

    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))  # no gap
    tags = [m.text.split(" ", 1)[0] for m in messages]
    assert len(tags) == len(set(tags)), "a message was stored twice"
    seq_of = dict(zip(tags, (m.seq for m in messages), strict=True))
    lost = sorted(set(acked) - set(seq_of))
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:5]}"
    assert all(seq_of[tag] == seq for tag, seq in acked.items())
    assert len(acked) >= ROUNDS * 20 and len(messages) >= len(acked)

    assert info.message_count == info.last_seq == len(messages)
    assert info.message_tokens == sum(m.token_count for m in messages)
    assert info.unsummarized_tokens == info.message_tokens
    replies = [m.usage for m in messages if m.usage is not None]
    assert info.usage.input_tokens == sum(u.input_tokens for u in replies)
    assert info.usage.output_tokens == sum(u.output_tokens for u in replies)
    assert info.usage.cache_read_tokens == sum(u.cache_read_tokens for u in replies)
    assert info.usage.cache_write_tokens == sum(u.cache_write_tokens for u in replies)
    assert abs(info.usage.cost_usd - sum(u.cost_usd for u in replies)) < 1e-9


if __name__ == "__main__":
    asyncio.run(child(os.environ["KILL9_DATABASE_URL"], int(sys.argv[1])))
