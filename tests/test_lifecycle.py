"""Session lifecycle through the manager: active -> idle -> finalized -> expired ->
deleted, /reset, and what the next message does at each stage.

The jobs' clock is a ``Clock`` the test moves: it starts at the real time (the store
stamps messages with it) and jumps forward past idle_after, expire_after and
retain_for, so nothing sleeps through an interval."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from memory.cache import carried_block
from memory.errors import SessionNotFound
from memory.manager import SessionManager
from memory.store import utcnow
from memory.store.rows import sessions
from memory.summarizer import SummaryInput, SummaryText
from memory.types import ChatKey, Role, SessionStatus
from tests.conftest import ManagerFactory

KEY = ChatKey("telegram", "42")
OTHER = ChatKey("discord", "9")


class Clock:
    """The jobs' "now": starts at the real time, moved by the test. The store stamps
    messages with the real time, which runs on meanwhile: moves past a threshold
    leave a minute's margin for the writes a test makes."""

    def __init__(self) -> None:
        self.at = utcnow()

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> datetime:
        self.at += timedelta(seconds=seconds)
        return self.at


async def set_columns(manager: SessionManager, sid: int, **values: Any) -> None:
    async with manager.store.db.writer.begin() as conn:
        await conn.execute(update(sessions).where(sessions.c.id == sid).values(**values))


async def quiet_for(manager: SessionManager, sid: int, seconds: float) -> None:
    await set_columns(manager, sid, last_activity_at=utcnow() - timedelta(seconds=seconds))


async def finalized(manager: SessionManager, now: datetime | None = None) -> int:
    return (await manager.finalize_idle(now=now))["finalized"]


async def expired(manager: SessionManager, now: datetime | None = None) -> int:
    return (await manager.expire_sessions(now=now))["expired"]


async def deleted(manager: SessionManager, now: datetime | None = None) -> int:
    return (await manager.delete_expired(now=now))["sessions"]


async def talk(manager: SessionManager, sid: int, lines: Sequence[str]) -> None:
    for i, line in enumerate(lines):
        await manager.add_message(sid, Role.USER if i % 2 == 0 else Role.ASSISTANT, line)


class EchoSummarizer:
    """Deterministic: names the seqs it covered; can be held mid-summary."""

    name = "echo"
    reads_files = False

    def __init__(self) -> None:
        self.hold = False
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def summarize(self, messages: Sequence[SummaryInput], max_tokens: int) -> SummaryText:
        self.started.set()
        if self.hold:
            await self.release.wait()
        return SummaryText("covered " + ",".join(f"{m.seq}:{m.text}" for m in messages), self.name)

    async def merge(self, summaries: Sequence[str], max_tokens: int) -> SummaryText:
        return SummaryText(" | ".join(summaries), self.name)


async def test_finalize_idle_moves_quiet_sessions_to_finalized_with_a_closing_summary(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    quiet = await manager.open(KEY)
    busy = await manager.open(OTHER)
    empty = await manager.open(ChatKey("console", "local"))
    await talk(manager, quiet.id, ["my name is Ann", "hello Ann", "remember 31337"])
    await talk(manager, busy.id, ["still here"])
    idle_after = manager.settings.idle_after_s
    await quiet_for(manager, quiet.id, idle_after + 60)
    await quiet_for(manager, empty.id, idle_after + 60)
    await quiet_for(manager, busy.id, idle_after - 60)

    assert await finalized(manager) == 2
    done = await manager.get(quiet.id)
    assert done.status is SessionStatus.FINALIZED
    assert done.closing_summary == "covered 1:my name is Ann,2:hello Ann,3:remember 31337"
    assert done.ended_at is None
    nothing = await manager.get(empty.id)
    assert (nothing.status, nothing.closing_summary) == (SessionStatus.FINALIZED, None)
    assert (await manager.get(busy.id)).status is SessionStatus.ACTIVE
    names = [e["name"] for e in await manager.store.events.of(quiet.id, "lifecycle")]
    assert names == ["created", "finalized"]
    # Finalized sessions are not finalized again.
    assert await finalized(manager) == 0
    # Messages are untouched by finalization.
    assert [m.seq for m in await manager.messages(quiet.id)] == [1, 2, 3]


async def test_idle_session_is_finalized_and_closing_summary_includes_summaries(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    session = await manager.open(KEY)
    await talk(manager, session.id, [f"line {i}" for i in range(20)])
    record = await manager.fold(session.id)
    assert record is not None and (record.first_seq, record.last_seq) == (1, 14)
    await manager.store.sessions.mark_idle(utcnow() + timedelta(seconds=1))
    assert (await manager.get(session.id)).status is SessionStatus.IDLE
    assert await finalized(manager) == 1
    closing = (await manager.get(session.id)).closing_summary
    folded = "covered " + ",".join(f"{i + 1}:line {i}" for i in range(14))
    tail = "covered " + ",".join(f"{i + 1}:line {i}" for i in range(14, 20))
    assert closing == f"{folded} | {tail}"


async def test_expire_then_open_starts_a_new_session_carrying_the_closing_summary(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    old = await manager.open(KEY)
    await talk(manager, old.id, ["the code word is heron", "noted"])
    await quiet_for(manager, old.id, manager.settings.idle_after_s + 60)
    assert await finalized(manager) == 1
    closing = (await manager.get(old.id)).closing_summary
    assert closing == "covered 1:the code word is heron,2:noted"
    # Not yet expired: still finalized; after expire_after, expired.
    assert await expired(manager) == 0
    await quiet_for(manager, old.id, manager.settings.expire_after_s + 60)
    assert await expired(manager) == 1
    gone = await manager.get(old.id)
    assert gone.status is SessionStatus.EXPIRED and gone.ended_at is not None
    assert await expired(manager) == 0

    misses = manager.cache.misses
    new = await manager.open(KEY)
    assert new.id != old.id
    assert (new.status, new.message_count, new.carried_summary) == (
        SessionStatus.ACTIVE,
        0,
        closing,
    )
    assert (await manager.open(KEY)).id == new.id
    await manager.add_message(new.id, Role.USER, "what was the code word?")
    context = await manager.build_context(new.id, system_prompt="sys")
    assert context.summaries == (carried_block(closing),)
    assert [m.text for m in context.messages] == ["what was the code word?"]
    # The new session was cached as it was created: its first context read nothing,
    # and it is the context another process builds from the database.
    assert manager.cache.misses == misses
    cold = await (await make_manager()).build_context(new.id, system_prompt="sys")
    assert cold == context
    # The carried summary stays first once the new session has summaries of its own.
    await talk(manager, new.id, [f"more {i}" for i in range(20)])
    assert await manager.fold(new.id) is not None
    context = await manager.build_context(new.id)
    assert context.summaries[0] == carried_block(closing)
    assert context.summaries[1].startswith("covered 1:what was the code word?,2:more 0")
    assert len(context.summaries) == 2
    # The old session is still there, unchanged, for export.
    assert [m.text for m in await manager.messages(old.id)] == ["the code word is heron", "noted"]


async def test_carry_closing_summary_can_be_turned_off(make_manager: ManagerFactory) -> None:
    manager = await make_manager(summarizer=EchoSummarizer(), carry_closing_summary=False)
    old = await manager.open(KEY)
    await talk(manager, old.id, ["hello"])
    await quiet_for(manager, old.id, manager.settings.idle_after_s + 60)
    await finalized(manager)
    await quiet_for(manager, old.id, manager.settings.expire_after_s + 60)
    new = await manager.open(KEY)
    assert new.id != old.id and new.carried_summary is None
    assert (await manager.get(old.id)).status is SessionStatus.EXPIRED


async def test_open_past_expiry_expires_even_before_the_job_runs(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    old = await manager.open(KEY)
    await talk(manager, old.id, ["hi"])
    await finalized(manager)  # nothing idle yet
    await manager.store.sessions.mark_idle(utcnow() + timedelta(seconds=1))
    assert await finalized(manager) == 1
    await quiet_for(manager, old.id, manager.settings.expire_after_s + 60)
    new = await manager.open(KEY)  # no expire_sessions() in between
    assert new.id != old.id
    assert new.carried_summary == "covered 1:hi"
    assert (await manager.get(old.id)).status is SessionStatus.EXPIRED


async def test_unfinalized_stale_session_still_carries_its_memory(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    old = await manager.open(KEY)
    await talk(manager, old.id, ["the code word is heron"])
    await quiet_for(manager, old.id, manager.settings.expire_after_s + 60)
    new = await manager.open(KEY)
    assert new.id != old.id
    assert new.carried_summary is not None and "heron" in new.carried_summary


async def test_message_to_a_finalized_session_continues_it(make_manager: ManagerFactory) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    session = await manager.open(KEY)
    await talk(manager, session.id, ["first"])
    await quiet_for(manager, session.id, manager.settings.idle_after_s + 60)
    assert await finalized(manager) == 1
    assert (await manager.get(session.id)).status is SessionStatus.FINALIZED

    again = await manager.open(KEY)
    assert again.id == session.id
    stored = await manager.add_message(session.id, Role.USER, "second")
    assert stored.seq == 2
    info = await manager.get(session.id)
    assert info.status is SessionStatus.ACTIVE
    assert info.last_activity_at > utcnow() - timedelta(minutes=1)
    assert info.message_count == 2
    context = await manager.build_context(session.id)
    assert [m.text for m in context.messages] == ["first\n\nsecond"]
    # Active again: a recent session is neither finalized nor expired.
    assert await finalized(manager) == 0
    assert await expired(manager) == 0


async def test_reset_keeps_the_old_session_until_retention_ends(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    old = await manager.open(KEY)
    await talk(manager, old.id, ["keep", "this"])
    await manager.build_context(old.id)  # cached
    fresh = await manager.reset(KEY)
    assert fresh.id != old.id
    assert fresh.carried_summary is None  # /reset starts clean
    assert (await manager.open(KEY)).id == fresh.id
    ended = await manager.get(old.id)
    assert ended.status is SessionStatus.ENDED and ended.ended_at is not None
    assert [m.text for m in await manager.messages(old.id)] == ["keep", "this"]
    await manager.add_message(fresh.id, Role.USER, "new start")

    assert await deleted(manager) == 0  # within retention
    assert [m.text for m in await manager.messages(old.id)] == ["keep", "this"]
    retain = manager.settings.retain_for_s
    nearly = utcnow() - timedelta(seconds=retain - 3600)
    await set_columns(manager, old.id, ended_at=nearly, last_activity_at=nearly)
    assert await deleted(manager) == 0
    past = utcnow() - timedelta(seconds=retain + 60)
    await set_columns(manager, old.id, ended_at=past, last_activity_at=past)
    assert await deleted(manager) == 1
    assert await manager.messages(old.id) == []
    with pytest.raises(SessionNotFound):
        await manager.get(old.id)
    # The current session is untouched.
    assert [m.text for m in await manager.messages(fresh.id)] == ["new start"]
    assert (await manager.open(KEY)).id == fresh.id


async def test_expired_sessions_are_deleted_after_retention(make_manager: ManagerFactory) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    old = await manager.open(KEY)
    await talk(manager, old.id, ["bye"])
    await quiet_for(manager, old.id, manager.settings.expire_after_s + 60)
    assert await expired(manager) == 1
    assert await deleted(manager) == 0
    past = utcnow() - timedelta(seconds=manager.settings.retain_for_s + 60)
    await set_columns(manager, old.id, ended_at=past, last_activity_at=past)
    assert await deleted(manager) == 1
    assert await manager.find_by_chat(KEY) is None
    new = await manager.open(KEY)
    assert (new.status, new.message_count, new.version, new.carried_summary) == (
        SessionStatus.ACTIVE,
        0,
        1,
        None,
    )
    assert await manager.messages(new.id) == []


async def test_session_ids_are_not_reused_after_cleanup(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager()
    old = await manager.open(KEY)
    await quiet_for(manager, old.id, manager.settings.expire_after_s + 60)
    assert await expired(manager) == 1
    past = utcnow() - timedelta(seconds=manager.settings.retain_for_s + 60)
    await set_columns(manager, old.id, ended_at=past, last_activity_at=past)
    assert await deleted(manager) == 1
    new = await manager.open(KEY)
    assert new.id != old.id


async def test_message_during_finalization_is_not_lost_from_the_closing_summary(
    make_manager: ManagerFactory,
) -> None:
    gate = EchoSummarizer()
    manager = await make_manager(summarizer=gate)
    session = await manager.open(KEY)
    await talk(manager, session.id, ["early"])
    await quiet_for(manager, session.id, manager.settings.idle_after_s + 60)
    gate.hold = True
    job = asyncio.create_task(finalized(manager))
    await asyncio.wait_for(gate.started.wait(), 5)
    await manager.add_message(session.id, Role.USER, "late fact 4242")
    gate.release.set()
    assert await job == 0  # the message made it active again: not finalized
    info = await manager.get(session.id)
    assert info.status is SessionStatus.ACTIVE
    assert info.closing_summary is None


# -- the lifecycle on a clock the test moves --------------------------------------------


async def test_every_transition_on_the_jobs_clock(make_manager: ManagerFactory) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    clock = Clock()
    settings = manager.settings
    session = await manager.open(KEY)
    await talk(manager, session.id, ["the code word is heron"])

    # Within idle_after: nothing moves, and a message continues the same session.
    clock.advance(settings.idle_after_s - 60)
    assert await manager.finalize_idle(now=clock()) == {"idle": 0, "finalized": 0}
    assert (await manager.open(KEY)).id == session.id
    assert (await manager.get(session.id)).status is SessionStatus.ACTIVE

    # Past idle_after (counted from the last message): idle, then finalized.
    clock.advance(120)
    assert await manager.finalize_idle(now=clock()) == {"idle": 1, "finalized": 1}
    info = await manager.get(session.id)
    assert info.status is SessionStatus.FINALIZED
    assert info.closing_summary == "covered 1:the code word is heron"
    # Before expire_after nothing expires, and nothing is deleted.
    clock.advance(settings.expire_after_s - settings.idle_after_s - 600)
    assert await manager.expire_sessions(now=clock()) == {"expired": 0, "summarized": 0}
    # Past expire_after: expired (its closing summary was there already).
    clock.advance(1200)
    assert await manager.expire_sessions(now=clock()) == {"expired": 1, "summarized": 0}
    gone = await manager.get(session.id)
    assert gone.status is SessionStatus.EXPIRED and gone.ended_at == clock()
    # Within retention it stays, whole, for export.
    clock.advance(settings.retain_for_s - 60)
    assert (await manager.delete_expired(now=clock()))["sessions"] == 0
    assert [m.text for m in await manager.messages(session.id)] == ["the code word is heron"]
    # The chat's next message starts a new session that carries the closing summary.
    new = await manager.open(KEY)
    assert new.id != session.id and new.carried_summary == "covered 1:the code word is heron"
    # Past retention (counted from its end): deleted with everything of it.
    clock.advance(120)
    counts = await manager.delete_expired(now=clock())
    assert counts == {
        "sessions": 1,
        "messages": 1,
        "summaries": 0,
        "events": 2,
        "message_attachments": 0,
    }
    with pytest.raises(SessionNotFound):
        await manager.get(session.id)
    assert (await manager.open(KEY)).id == new.id


async def test_expire_writes_the_closing_summary_the_finalize_job_never_wrote(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    clock = Clock()
    session = await manager.open(KEY)
    await talk(manager, session.id, ["remember 4711"])
    clock.advance(manager.settings.expire_after_s + 60)
    # No finalize run in between (the process was down): expire summarizes it.
    assert await manager.expire_sessions(now=clock()) == {"expired": 1, "summarized": 1}
    assert (await manager.get(session.id)).closing_summary == "covered 1:remember 4711"
    new = await manager.open(KEY)
    assert new.carried_summary == "covered 1:remember 4711"


async def test_finalize_and_expire_work_in_batches(make_manager: ManagerFactory) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    clock = Clock()
    ids = []
    for n in range(7):
        session = await manager.open(ChatKey("telegram", f"b{n}"))
        await talk(manager, session.id, [f"hello {n}"])
        ids.append(session.id)
    steps: list[dict[str, int]] = []

    async def progress(counts: Any) -> None:
        steps.append(dict(counts))

    clock.advance(manager.settings.idle_after_s + 60)
    counts = await manager.finalize_idle(now=clock(), batch=3, progress=progress)
    assert counts == {"idle": 7, "finalized": 7}
    assert steps == [
        {"idle": 3},
        {"idle": 3},
        {"idle": 1},
        {"finalized": 3},
        {"finalized": 3},
        {"finalized": 1},
    ]
    for sid in ids:
        assert (await manager.get(sid)).status is SessionStatus.FINALIZED
    steps.clear()
    clock.advance(manager.settings.expire_after_s)
    counts = await manager.expire_sessions(now=clock(), batch=4, progress=progress)
    assert counts == {"expired": 7, "summarized": 0}
    assert steps == [{"expired": 4}, {"expired": 3}]


async def test_cleanup_deletes_exactly_what_is_past_retention(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager(summarizer=EchoSummarizer())
    clock = Clock()
    retain = manager.settings.retain_for_s

    async def session_with(key: ChatKey, lines: int) -> int:
        sid = (await manager.open(key)).id
        await talk(manager, sid, [f"{key.chat_id} line {i}" for i in range(lines)])
        await manager.record_tool_call(sid, "search")
        return sid

    # Past retention: one expired, one ended by /reset; with 25 and 13 messages.
    expired_old = await session_with(ChatKey("telegram", "old"), 25)
    await manager.fold(expired_old)  # a summary, deleted with it
    ended_old = await session_with(ChatKey("discord", "old"), 13)
    await manager.reset(ChatKey("discord", "old"))
    # Kept: still active, however old; expired but within retention; ended long ago
    # but with a message since (a reply that landed after the /reset).
    active_old = await session_with(ChatKey("telegram", "active"), 4)
    expired_recent = await session_with(ChatKey("telegram", "recent"), 3)
    ended_touched = await session_with(ChatKey("discord", "touched"), 2)
    await manager.reset(ChatKey("discord", "touched"))

    long_ago = clock() - timedelta(seconds=retain + 3600)
    recently = clock() - timedelta(seconds=retain - 3600)
    await set_columns(manager, expired_old, status="expired", ended_at=long_ago)
    await set_columns(manager, expired_old, last_activity_at=long_ago)
    await set_columns(manager, ended_old, ended_at=long_ago, last_activity_at=long_ago)
    await set_columns(manager, active_old, last_activity_at=long_ago)
    await set_columns(manager, expired_recent, status="expired", ended_at=recently)
    await set_columns(manager, expired_recent, last_activity_at=recently)
    await set_columns(manager, ended_touched, ended_at=long_ago, last_activity_at=clock())
    before = {sid: await manager.messages(sid) for sid in (active_old, expired_recent)}

    steps: list[dict[str, int]] = []

    async def progress(counts: Any) -> None:
        steps.append(dict(counts))

    counts = await manager.delete_expired(now=clock(), batch=10, progress=progress)
    assert counts == {
        "sessions": 2,
        "messages": 38,
        "summaries": 1,
        "events": 4,
        "message_attachments": 0,
    }
    # 38 messages, ten at a time.
    assert [s["messages"] for s in steps if "messages" in s] == [10, 10, 10, 8]
    for sid in (expired_old, ended_old):
        with pytest.raises(SessionNotFound):
            await manager.get(sid)
        assert await manager.messages(sid) == []
        assert await manager.summaries(sid, include_superseded=True) == []
        assert await manager.store.events.of(sid) == []
    for sid, lines in ((active_old, 4), (expired_recent, 3), (ended_touched, 2)):
        assert len(await manager.messages(sid)) == lines
        assert len(await manager.store.events.of(sid, "tool_call")) == 1
    assert {sid: await manager.messages(sid) for sid in before} == before
    # The chats whose sessions went simply start again.
    assert (await manager.find_by_chat(ChatKey("telegram", "old"))) is None
    assert (await manager.open(ChatKey("telegram", "old"))).message_count == 0
    assert (await manager.delete_expired(now=clock()))["sessions"] == 0


async def test_a_session_that_takes_a_message_during_cleanup_is_left_alone(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager()
    clock = Clock()
    session = await manager.open(KEY)
    await talk(manager, session.id, [f"line {i}" for i in range(30)])
    clock.advance(manager.settings.expire_after_s + 60)
    assert (await manager.expire_sessions(now=clock()))["expired"] == 1
    clock.advance(manager.settings.retain_for_s + 1)
    arrived: list[int] = []

    async def progress(counts: Any) -> None:
        if not arrived:  # after the first batch: a late reply lands in the session
            stored = await manager.add_message(session.id, Role.ASSISTANT, "late reply")
            arrived.append(stored.seq)

    counts = await manager.delete_expired(now=clock(), batch=10, progress=progress)
    # The first batch went before the reply; nothing after it.
    assert counts["messages"] == 10 and counts["sessions"] == 0
    kept = await manager.messages(session.id)
    assert [m.seq for m in kept] == [*range(11, 31), arrived[0]]
    assert (await manager.get(session.id)).status is SessionStatus.ACTIVE


async def test_upgrade_without_a_model_summarizer_says_so(manager: SessionManager) -> None:
    assert await manager.upgrade_fallback_summaries() == {
        "sessions": 0,
        "upgraded": 0,
        "unavailable": 1,
    }
