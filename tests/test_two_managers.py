"""Two managers (two sets of engines, as two processes have) over one database, and a
real second process on SQLite: nothing lost, nothing doubled, seqs gapless, and each
manager sees what the other wrote."""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path

from memory.database import migrate, open_database
from memory.manager import SessionManager
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import Store
from memory.tokens import TokenCounter
from memory.types import ChatKey, Role, StoredMessage
from tests.conftest import SMALL, ManagerFactory

REPO = Path(__file__).resolve().parent.parent


def line(tag: str, i: int) -> str:
    return f"{tag} message {i}: the " + " ".join(f"w{i}x{j}" for j in range(9))


async def check_gapless(manager: SessionManager, sid: int, expected_texts: set[str]) -> None:
    stored = await manager.messages(sid)
    assert [m.seq for m in stored] == list(range(1, len(expected_texts) + 1))
    assert {m.text for m in stored} == expected_texts
    assert len(stored) == len(expected_texts)
    info = await manager.get(sid)
    assert (info.message_count, info.last_seq) == (len(stored), len(stored))
    assert info.message_tokens == sum(m.token_count for m in stored)
    assert info.unsummarized_tokens == info.message_tokens


async def test_concurrent_writes_from_two_managers_lose_nothing(
    make_manager: ManagerFactory,
) -> None:
    a = await make_manager()
    b = await make_manager()
    keys = [ChatKey("telegram", str(n)) for n in range(5)]
    opened_a = [await a.open(k) for k in keys]
    opened_b = [await b.open(k) for k in keys]
    assert [s.id for s in opened_a] == [s.id for s in opened_b]  # both resolve the same
    sids = [s.id for s in opened_a]

    async def write(manager: SessionManager, tag: str, sid: int, i: int) -> StoredMessage:
        return await manager.add_message(sid, Role.USER, line(f"{tag}{sid}", i))

    results = await asyncio.gather(
        *(
            write(manager, tag, sid, i)
            for i in range(100)
            for sid in sids
            for manager, tag in ((a, "A"), (b, "B"))
        )
    )
    assert len(results) == 1000 and not any(r.duplicate for r in results)
    for sid in sids:
        returned = sorted(r.seq for r in results if r.session_id == sid)
        assert returned == list(range(1, 201))  # every caller got its own seq
        expected = {line(f"{tag}{sid}", i) for tag in "AB" for i in range(100)}
        await check_gapless(a, sid, expected)
        # Each manager's messages keep their own order within the session.
        stored = await b.messages(sid)
        for tag in "AB":
            mine = [m.text for m in stored if m.text.startswith(f"{tag}{sid} ")]
            assert mine == [line(f"{tag}{sid}", i) for i in range(100)]
    stats = await b.global_stats()
    assert (stats.sessions_total, stats.messages) == (5, 1000)


async def test_same_platform_ids_through_both_managers_are_stored_once(
    make_manager: ManagerFactory,
) -> None:
    a = await make_manager()
    b = await make_manager()
    chat = ChatKey("discord", "31")
    session = await a.open(chat)

    async def deliver(manager: SessionManager, i: int) -> StoredMessage:
        return await manager.add_message(
            session.id, Role.USER, f"update {i}", chat=chat, platform_message_id=f"u{i}"
        )

    pairs = await asyncio.gather(*(asyncio.gather(deliver(a, i), deliver(b, i)) for i in range(60)))
    for i, (from_a, from_b) in enumerate(pairs):
        assert sorted([from_a.duplicate, from_b.duplicate]) == [False, True], i
        assert from_a.seq == from_b.seq
        assert from_a.text == from_b.text == f"update {i}"
    stored = await a.messages(session.id)
    assert [m.seq for m in stored] == list(range(1, 61))
    assert sorted(m.platform_message_id or "" for m in stored) == sorted(f"u{i}" for i in range(60))
    info = await b.get(session.id)
    assert (info.message_count, info.last_seq) == (60, 60)
    # Redelivery later, through either manager, is still a duplicate.
    again = await b.add_message(
        session.id, Role.USER, "late copy", chat=chat, platform_message_id="u7"
    )
    assert again.duplicate and again.text == "update 7"
    assert (await a.get(session.id)).message_count == 60


async def test_foreign_writes_are_seen_at_once_when_always_verifying(
    make_manager: ManagerFactory,
) -> None:
    a = await make_manager(cache_verify_after_s=0)
    b = await make_manager()
    chat = ChatKey("telegram", "8")
    session = await a.open(chat)
    await a.add_message(session.id, Role.USER, "from A")
    first = await a.build_context(session.id)
    assert [m.text for m in first.messages] == ["from A"]
    await b.add_message(session.id, Role.ASSISTANT, "from B")
    seen = await a.build_context(session.id)
    assert [(m.role, m.text) for m in seen.messages] == [
        (Role.USER, "from A"),
        (Role.ASSISTANT, "from B"),
    ]
    # B folds the history into a summary; A's next context has it, and not the messages.
    for i in range(20):
        await b.add_message(session.id, Role.USER if i % 2 else Role.ASSISTANT, line("B", i))
    record = await b.fold(session.id)
    assert record is not None and (record.first_seq, record.last_seq) == (1, 15)
    folded = await a.build_context(session.id)
    assert folded.summaries == (record.text,)
    assert folded == await b.build_context(session.id)
    tail = await a.messages(session.id, after=15)
    assert [m.text for m in folded.messages] == [m.text for m in tail]  # they alternate
    # A cached the session empty when it created it: one reload per foreign write.
    assert a.cache.misses == 2


async def test_default_verify_window_catches_up_on_the_next_own_write(
    make_manager: ManagerFactory,
) -> None:
    a = await make_manager()  # cache_verify_after_s at its default
    assert a.settings.cache_verify_after_s == 2.0
    b = await make_manager()
    chat = ChatKey("telegram", "9")
    session = await a.open(chat)
    await a.add_message(session.id, Role.USER, "one")
    await a.build_context(session.id)
    cached = a.cache.peek(session.id)
    assert cached is not None
    version_before = cached.version
    await b.add_message(session.id, Role.ASSISTANT, "two (from B)")
    # A's own write sees the row version jump by two (B's write, then its own) and
    # drops its cached copy instead of patching a stale one.
    await a.add_message(session.id, Role.USER, "three")
    assert a.cache.peek(session.id) is None
    context = await a.build_context(session.id)
    assert [m.text for m in context.messages] == ["one", "two (from B)", "three"]
    reloaded = a.cache.peek(session.id)
    assert reloaded is not None
    assert reloaded.version == version_before + 2 == await a.store.sessions.version(session.id)
    assert (reloaded.last_seq, reloaded.message_count) == (3, 3)


async def test_both_managers_summarizing_at_once_never_overlap(
    make_manager: ManagerFactory,
) -> None:
    a = await make_manager(cache_verify_after_s=0)
    b = await make_manager(cache_verify_after_s=0)
    session = await a.open(ChatKey("telegram", "10"))
    for i in range(60):
        await (a if i % 2 else b).add_message(session.id, Role.USER, line("x", i))
    started = await asyncio.gather(a.maybe_summarize(session.id), b.maybe_summarize(session.id))
    assert list(started) == [True, True]
    await asyncio.gather(a.wait_for_summaries(), b.wait_for_summaries())
    records = await a.summaries(session.id, include_superseded=True)
    level_one = sorted((r for r in records if r.level == 1), key=lambda r: r.first_seq)
    assert level_one
    expected = 1
    for record in level_one:
        assert record.first_seq == expected, [(r.first_seq, r.last_seq) for r in level_one]
        expected = record.last_seq + 1
    info = await b.get(session.id)
    assert info.summarized_through == expected - 1
    stored = await a.messages(session.id)
    unsummarized = sum(m.token_count for m in stored if m.seq > info.summarized_through)
    assert info.unsummarized_tokens == unsummarized
    assert len(stored) == 60
    assert await a.build_context(session.id) == await b.build_context(session.id)


CHILD = r"""
import asyncio, sys
from memory.database import migrate, open_database
from memory.manager import SessionManager
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import Store
from memory.tokens import TokenCounter
from memory.types import ChatKey, Role

async def main(url, sid, tag, count, shared):
    database = open_database(url, DatabaseSettings(busy_timeout_ms=30000))
    await migrate(database)
    manager = SessionManager(Store(database), TokenCounter(), MemorySettings())
    await manager.start()
    chat = ChatKey("console", "shared")
    print("ready", flush=True)
    sys.stdin.readline()

    async def one(i):
        await manager.add_message(sid, Role.USER, f"{tag} {i}", chat=chat,
                                  platform_message_id=f"{tag}-{i}")

    async def dup(i):
        await manager.add_message(sid, Role.USER, f"shared {i} via {tag}", chat=chat,
                                  platform_message_id=f"shared-{i}")

    for start in range(0, count, 10):
        batch = [one(i) for i in range(start, start + 10)]
        if start // 10 < shared:
            batch.append(dup(start // 10))
        await asyncio.gather(*batch)
        await asyncio.sleep(0.01)  # keep writing long enough to overlap the parent
    await manager.close()
    await database.dispose()
    print("done", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


async def test_two_processes_append_to_one_sqlite_session(sqlite_url: str) -> None:
    database = open_database(sqlite_url, DatabaseSettings(busy_timeout_ms=30_000))
    await migrate(database)
    manager = SessionManager(Store(database), TokenCounter(), MemorySettings(**SMALL))
    await manager.start()
    try:
        chat = ChatKey("console", "shared")
        session = await manager.open(chat)
        shared = 20
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            sqlite_url,
            str(session.id),
            "child",
            "200",
            str(shared),
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        ready = await asyncio.wait_for(child.stdout.readline(), 30)
        assert ready == b"ready\n", (ready, await child.stderr.read() if child.stderr else b"")
        child.stdin.write(b"go\n")
        await child.stdin.drain()

        async def one(i: int) -> StoredMessage:
            return await manager.add_message(
                session.id, Role.USER, f"parent {i}", chat=chat, platform_message_id=f"parent-{i}"
            )

        async def dup(i: int) -> StoredMessage:
            return await manager.add_message(
                session.id,
                Role.USER,
                f"shared {i} via parent",
                chat=chat,
                platform_message_id=f"shared-{i}",
            )

        mine: list[StoredMessage] = []
        for start in range(0, 200, 10):
            batch = [one(i) for i in range(start, start + 10)]
            if start // 10 < shared:
                batch.append(dup(start // 10))
            mine.extend(await asyncio.gather(*batch))
            await asyncio.sleep(0.01)  # keep writing long enough to overlap the child
        out, err = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 0, err.decode()
        assert out == b"done\n"

        stored = await manager.messages(session.id)
        assert len(stored) == 400 + shared
        assert [m.seq for m in stored] == list(range(1, 401 + shared))
        texts = [m.text for m in stored]
        # The two processes really did write at the same time: their messages interleave.
        authors = [t.split()[0] if not t.startswith("shared ") else t.split()[-1] for t in texts]
        assert sum(1 for x, y in itertools.pairwise(authors) if x != y) >= 2
        for tag in ("parent", "child"):
            assert [t for t in texts if t.startswith(f"{tag} ")] == [
                f"{tag} {i}" for i in range(200)
            ]
        shared_ids = sorted(
            m.platform_message_id or "" for m in stored if m.text.startswith("shared ")
        )
        assert shared_ids == sorted(f"shared-{i}" for i in range(shared))
        info = await manager.get(session.id)
        assert (info.message_count, info.last_seq) == (400 + shared, 400 + shared)
        assert info.message_tokens == sum(m.token_count for m in stored)
        # A context built now holds every message from both processes, in order.
        context = await manager.build_context(session.id, budget=100_000)
        assert "\n\n".join(m.text for m in context.messages) == "\n\n".join(texts)
        parent_own = [m for m in mine if m.text.startswith("parent ")]
        assert not any(m.duplicate for m in parent_own)
        assert len({m.seq for m in parent_own}) == 200
    finally:
        await manager.close()
        await database.dispose()
