"""What memory tells its observers: every message stored once, summaries, and each
change of a session's state; and an observer that fails never fails a write."""

from __future__ import annotations

from datetime import timedelta

from memory.manager import SessionManager
from memory.observers import Change, MemoryEvent, MessageStored, SessionChanged, SummaryWritten
from memory.store import utcnow
from memory.types import ChatKey, Role
from tests.conftest import ManagerFactory


def changes(events: list[MemoryEvent]) -> list[tuple[int, Change]]:
    return [(e.session_id, e.change) for e in events if isinstance(e, SessionChanged)]


async def test_messages_summaries_and_resets_are_told(manager: SessionManager) -> None:
    events: list[MemoryEvent] = []
    stop = manager.observe(events.append)
    key = ChatKey("telegram", "1")
    first = await manager.open(key)
    await manager.add_message(first.id, Role.USER, "hi", chat=key, platform_message_id="7")
    await manager.add_message(first.id, Role.USER, "hi", chat=key, platform_message_id="7")
    stored = [e.message for e in events if isinstance(e, MessageStored)]
    assert [(m.seq, m.text, m.duplicate) for m in stored] == [(1, "hi", False)]
    for n in range(20):
        await manager.add_message(first.id, Role.USER, f"fact {n}: the code is {n * 7}")
    record = await manager.fold(first.id)
    assert [e.summary for e in events if isinstance(e, SummaryWritten)] == [record]
    second = await manager.reset(key)
    assert changes(events) == [
        (first.id, Change.CREATED),
        (first.id, Change.ENDED),
        (second.id, Change.RESET),
    ]
    await manager.delete_session(first.id)
    assert changes(events)[-1] == (first.id, Change.DELETED)
    stop()
    await manager.add_message(second.id, Role.USER, "unheard")
    assert not any(isinstance(e, MessageStored) and e.message.text == "unheard" for e in events)


async def test_the_lifecycle_is_told(make_manager: ManagerFactory) -> None:
    manager = await make_manager(idle_after_s=1, expire_after_s=2)
    events: list[MemoryEvent] = []
    manager.observe(events.append)
    session = await manager.open(ChatKey("discord", "5"))
    await manager.add_message(session.id, Role.USER, "one thing to remember: 4417")
    later = utcnow() + timedelta(seconds=1.5)  # past idle_after_s
    assert (await manager.finalize_idle(now=later))["finalized"] == 1
    assert changes(events)[1:] == [(session.id, Change.IDLE), (session.id, Change.FINALIZED)]
    later += timedelta(seconds=2)  # past expire_after_s
    assert (await manager.expire_sessions(now=later))["expired"] == 1
    assert changes(events)[3:] == [(session.id, Change.EXPIRED)]
    fresh = await manager.open(ChatKey("discord", "5"))
    assert changes(events)[4:] == [(fresh.id, Change.CREATED)]


async def test_a_failing_observer_never_fails_a_write(manager: SessionManager) -> None:
    def broken(_event: MemoryEvent) -> None:
        raise RuntimeError("observer bug")

    seen: list[MemoryEvent] = []
    manager.observe(broken)
    manager.observe(seen.append)
    session = await manager.open(ChatKey("telegram", "2"))
    stored = await manager.add_message(session.id, Role.USER, "still stored")
    assert stored.seq == 1
    assert any(isinstance(e, MessageStored) for e in seen)
    assert [m.text for m in await manager.messages(session.id)] == ["still stored"]
