"""Live events with a real python-socketio client: authentication, rooms, the events a
turn causes, the jobs' runs and the session changes they make, transcript lines, and
what is published when nobody listens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import socketio

from conversation.job_runner import JobRunner
from conversation.job_settings import JobsSettings
from conversation.scheduler import Scheduler
from memory.manager import SessionManager
from memory.types import ChatKey, Role, SessionStatus
from tests.operator_surface import TOKEN, Surface, start_surface, stop_surface


@pytest.fixture
async def surface(manager: SessionManager, tmp_path: Path) -> AsyncIterator[Surface]:
    started = await start_surface(manager, tmp_path)
    yield started
    await stop_surface(started)


class Listener:
    """A Socket.IO client that keeps every event it receives."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.arrived = asyncio.Condition()
        for name in ("message", "session", "summary", "job_run"):
            self.client.on(name, self._keeper(name))

    def _keeper(self, name: str) -> Any:
        async def keep(data: dict[str, Any]) -> None:
            async with self.arrived:
                self.events.append((name, data))
                self.arrived.notify_all()

        return keep

    async def connect(self, url: str, token: str = TOKEN) -> None:
        await self.client.connect(url, auth={"token": token}, transports=["websocket"])

    async def wait_for(self, count: int, name: str) -> list[dict[str, Any]]:
        async with asyncio.timeout(10), self.arrived:
            await self.arrived.wait_for(
                lambda: len([e for e in self.events if e[0] == name]) >= count
            )
        return [data for n, data in self.events if n == name]


async def test_a_wrong_or_missing_token_is_refused(surface: Surface) -> None:
    for auth in ({"token": "wrong"}, {}, None):
        client = socketio.AsyncClient(reconnection=False)
        refusals: list[Any] = []
        client.on("connect_error", refusals.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(surface.url, auth=auth, transports=["websocket"])
        await client.disconnect()
        assert refusals and "authentication failed" in str(refusals[0])
        assert TOKEN not in str(refusals[0])


async def test_a_turn_s_messages_and_session_reach_a_subscribed_client(surface: Surface) -> None:
    listener = Listener()
    await listener.connect(surface.url)
    try:
        ack = await listener.client.call("subscribe", {"all": True}, timeout=5)
        assert ack == {"ok": True, "room": "all"}
        bad = await listener.client.call("subscribe", {"session": "x"}, timeout=5)
        assert bad["ok"] is False
        await surface.chat("desk", "hello live")
        messages = await listener.wait_for(2, "message")
        user, reply = messages[0], messages[1]
        assert (user["role"], user["text"], user["author"]) == (
            "user",
            "hello live",
            {"id": "u1", "name": "Ada"},
        )
        assert user["tokens"] > 0 and user["chat"] == "api:desk:"
        assert reply["role"] == "assistant" and reply["usage"]["input_tokens"] == 120
        sessions = await listener.wait_for(1, "session")
        assert sessions[0]["change"] == "created"
        assert sessions[0]["session_id"] == user["session_id"]
        # A fold is a summary event, a deletion a session event.
        manager = surface.manager
        for n in range(30):
            await manager.add_message(user["session_id"], Role.USER, f"line {n} of notes")
        await manager.fold(user["session_id"])
        summary = (await listener.wait_for(1, "summary"))[0]
        assert summary["session_id"] == user["session_id"] and summary["level"] == 1
        await surface.send("DELETE", f"/api/sessions/{user['session_id']}")
        changes = [s["change"] for s in await listener.wait_for(2, "session")]
        assert changes == ["created", "deleted"]
    finally:
        await listener.client.disconnect()


async def test_a_session_room_hears_only_its_session(surface: Surface) -> None:
    manager = surface.manager
    mine = await manager.open(ChatKey("telegram", "1"))
    other = await manager.open(ChatKey("telegram", "2"))
    listener = Listener()
    await listener.connect(surface.url)
    try:
        ack = await listener.client.call("subscribe", {"session": mine.id}, timeout=5)
        assert ack["ok"] is True
        await manager.add_message(other.id, Role.USER, "not for you")
        await manager.add_message(mine.id, Role.USER, "for you")
        messages = await listener.wait_for(1, "message")
        await asyncio.sleep(0.2)
        assert [d["text"] for n, d in listener.events if n == "message"] == ["for you"]
        assert messages[0]["session_id"] == mine.id
    finally:
        await listener.client.disconnect()


async def test_transcript_message_adds_a_line_without_a_reply(surface: Surface) -> None:
    manager = surface.manager
    session = await manager.open(ChatKey("discord", "555"))
    listener = Listener()
    await listener.connect(surface.url)
    try:
        line = {
            "session_id": session.id,
            "user_id": "spk-2",
            "display_name": "Speaker 2",
            "text": "we agreed on Friday",
            "message_id": "asr-1",
        }
        ack = await listener.client.call("transcript_message", line, timeout=5)
        assert ack == {"ok": True, "session_id": session.id, "seq": 1, "duplicate": False}
        again = await listener.client.call("transcript_message", line, timeout=5)
        assert again["duplicate"] is True and again["seq"] == 1
        by_chat = await listener.client.call(
            "transcript_message",
            {"chat": "discord:555", "user_id": "spk-3", "text": "and Monday too"},
            timeout=5,
        )
        assert by_chat["ok"] is True and by_chat["session_id"] == session.id
        stored = await manager.messages(session.id)
        assert [(m.role, m.author_name, m.text) for m in stored] == [
            (Role.USER, "Speaker 2", "we agreed on Friday"),
            (Role.USER, None, "and Monday too"),
        ]
        for bad, error in [
            ({"user_id": "x", "text": "y"}, "exactly one of session_id and chat"),
            ({"session_id": session.id, "text": "y"}, "user_id"),
            ({"session_id": session.id, "user_id": "x", "text": "   "}, "empty"),
            ({"session_id": 999999, "user_id": "x", "text": "y"}, "does not exist"),
            ("just text", "send an object"),
        ]:
            ack = await listener.client.call("transcript_message", bad, timeout=5)
            assert ack["ok"] is False and error in ack["error"], (bad, ack)
        await manager.end_session(session.id)
        ended = await listener.client.call(
            "transcript_message",
            {"session_id": session.id, "user_id": "x", "text": "late"},
            timeout=5,
        )
        assert ended["ok"] is False and "ended" in ended["error"]
    finally:
        await listener.client.disconnect()


async def test_nothing_is_published_while_nobody_listens(surface: Surface) -> None:
    live = surface.server.live
    manager = surface.manager
    session = await manager.open(ChatKey("telegram", "9"))
    await manager.add_message(session.id, Role.USER, "unheard")
    assert live.queue.qsize() == 0 and live._unobserve is None
    listener = Listener()
    await listener.connect(surface.url)
    await listener.client.call("subscribe", {"all": True}, timeout=5)
    assert live._unobserve is not None
    await listener.client.disconnect()
    async with asyncio.timeout(5):
        while live._unobserve is not None:  # noqa: ASYNC110 - the server's own handler runs
            await asyncio.sleep(0.01)


async def test_a_full_queue_drops_and_counts_and_never_fails_a_write(
    manager: SessionManager, tmp_path: Path
) -> None:
    small = await start_surface(manager, tmp_path, live_queue=10)
    live = small.server.live
    try:
        live._pump.cancel() if live._pump else None  # nobody drains: the queue fills
        listener = Listener()
        await listener.connect(small.url)
        await listener.client.call("subscribe", {"all": True}, timeout=5)
        session = await manager.open(ChatKey("telegram", "10"))
        for n in range(25):
            await manager.add_message(session.id, Role.USER, f"burst {n}")
        # 26 events (the session's creation, 25 messages), room for 10.
        assert live.queue.qsize() == 10 and live.dropped == 16
        assert len(await manager.messages(session.id)) == 25
        status, raw = await small.get("/metrics")
        assert status == 200
        assert 'palaver_live_events_dropped_total{reason="queue_full"} 16.0' in raw.decode()
        await listener.client.disconnect()
    finally:
        await stop_surface(small)


async def test_job_runs_and_each_change_of_a_session_reach_a_subscribed_client(
    surface: Surface,
) -> None:
    """Beyond created and deleted: a reset, the finalize job's idle and finalized, the
    expire job's expired; and each job run, run by hand over HTTP, as ``job_run``."""
    manager = surface.manager
    settings = manager.settings
    start = datetime.now(UTC)
    clock = [start]
    runner = JobRunner(manager, JobsSettings(), now=lambda: clock[0])
    runner.observers.append(surface.server.job_finished)  # as the application wires it
    surface.server.jobs = Scheduler(runner)
    listener = Listener()
    await listener.connect(surface.url)
    try:
        await listener.client.call("subscribe", {"all": True}, timeout=5)
        await surface.chat("desk", "before the reset")
        await surface.chat("desk", "/reset")
        events = await surface.chat("desk", "after the reset")
        fresh = events[-1][1]["session_id"]
        first = (await listener.wait_for(1, "session"))[0]["session_id"]
        assert fresh != first

        clock[0] = start + timedelta(seconds=settings.idle_after_s + 60)
        status, finalize = await surface.send("POST", "/api/jobs/finalize/run")
        assert status == 200 and finalize["counts"]["finalized"] == 1
        [run] = await listener.wait_for(1, "job_run")
        assert run == {
            "id": finalize["id"],
            "job": "finalize",
            "started_at": clock[0].isoformat(),
            "finished_at": clock[0].isoformat(),
            "outcome": "ok",
            "counts": {"idle": 1, "finalized": 1},
            "error": None,
        }
        idle_at = clock[0]

        clock[0] = start + timedelta(seconds=settings.expire_after_s + 60)
        status, expire = await surface.send("POST", "/api/jobs/expire/run")
        assert status == 200 and expire["counts"]["expired"] == 1
        runs = await listener.wait_for(2, "job_run")
        assert [(r["id"], r["job"], r["outcome"]) for r in runs] == [
            (finalize["id"], "finalize", "ok"),
            (expire["id"], "expire", "ok"),
        ]
        sessions = await listener.wait_for(6, "session")
        assert [(s["session_id"], s["change"]) for s in sessions] == [
            (first, "created"),
            (first, "ended"),
            (fresh, "reset"),
            (fresh, "idle"),
            (fresh, "finalized"),
            (fresh, "expired"),
        ]
        assert [s["at"] for s in sessions[3:]] == [
            idle_at.isoformat(),
            idle_at.isoformat(),
            clock[0].isoformat(),
        ]
        assert (await manager.get(fresh)).status is SessionStatus.EXPIRED
    finally:
        await listener.client.disconnect()
