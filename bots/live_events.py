"""Live events over Socket.IO, on the operator surface's aiohttp app.

A client connects with the admin token in its auth payload (``{"token": ...}``),
then ``subscribe`` to ``{"session": 12}`` or ``{"all": true}`` (acknowledged). It
receives:

- ``message``: a stored message, with its author and token count;
- ``session``: a session's state changed (created, reset, ended, idle, finalized,
  expired, deleted, imported);
- ``summary``: a summary written;
- ``job_run``: a job run finished (to "all" only).

It may send ``transcript_message`` ``{"session_id" or "chat", "user_id",
"display_name", "text", "message_id"?}``: a participant's line added to a session,
with no model reply; the ack says ``{"ok": true, "session_id", "seq"}`` or
``{"ok": false, "error"}``.

Publishing never slows or fails a turn: memory's observer callback only puts the
event on a bounded queue (full: dropped and counted), and is registered only while
some client is subscribed, so with nobody listening nothing is built at all. One
task drains the queue and emits; a client whose outgoing backlog is past
``live_client_backlog`` packets is skipped (counted) until it catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import socketio
from aiohttp import web

from bots.http_auth import AdminToken
from bots.metrics import Metrics
from conversation.access import Actor
from conversation.dispatcher import Dispatcher
from conversation.operations import message_view, summary_view
from conversation.turn import Outcome, Question
from memory.errors import PalaverError
from memory.observers import MemoryEvent, MessageStored, SummaryWritten
from memory.types import ChatKey, Role, SessionStatus

log = logging.getLogger(__name__)

ALL = "all"
OPEN = (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.FINALIZED)


class JobRunView(Protocol):
    """A recorded job run, as the jobs' runner hands it out."""

    @property
    def id(self) -> int: ...

    @property
    def job(self) -> str: ...

    @property
    def started_at(self) -> datetime: ...

    @property
    def finished_at(self) -> datetime | None: ...

    @property
    def outcome(self) -> str: ...

    @property
    def counts(self) -> dict[str, int]: ...

    @property
    def error(self) -> str | None: ...


def job_run_view(run: JobRunView) -> dict[str, Any]:
    return {
        "id": run.id,
        "job": run.job,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "outcome": run.outcome,
        "counts": dict(run.counts),
        "error": run.error,
    }


def room(session_id: int) -> str:
    return f"session:{session_id}"


def render(event: MemoryEvent) -> tuple[str, dict[str, Any], list[str]]:
    """(event name, payload, rooms) of a memory event."""
    if isinstance(event, MessageStored):
        m = event.message
        view = message_view(m)
        view["author"] = {"id": m.author_id, "name": m.author_name}
        view["tokens"] = m.token_count
        view["chat"] = m.chat_ref
        return "message", view, [ALL, room(m.session_id)]
    if isinstance(event, SummaryWritten):
        s = event.summary
        view = summary_view(s)
        view.update(session_id=s.session_id, merged=event.merged, upgraded=event.upgraded)
        return "summary", view, [ALL, room(s.session_id)]
    payload = {
        "session_id": event.session_id,
        "change": event.change.value,
        "chat": event.chat_ref,
        "at": event.at.isoformat(),
    }
    return "session", payload, [ALL, room(event.session_id)]


class LiveEvents:
    def __init__(
        self,
        dispatcher: Dispatcher,
        token: AdminToken,
        *,
        queue_size: int = 10_000,
        client_backlog: int = 1000,
        metrics: Metrics | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.manager = dispatcher.turn.manager
        self.token = token
        self.metrics = metrics
        self.client_backlog = client_backlog
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp", logger=False, engineio_logger=False, cors_allowed_origins=[]
        )
        self.queue: asyncio.Queue[tuple[str, dict[str, Any], list[str]] | MemoryEvent] = (
            asyncio.Queue(queue_size)
        )
        self.dropped = 0
        self.skipped = 0
        self._subscribed: dict[str, set[str]] = {}  # sid -> rooms
        self._unobserve: Callable[[], None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self.sio.on("subscribe", self._subscribe)
        self.sio.on("unsubscribe", self._unsubscribe)
        self.sio.on("transcript_message", self._transcript_message)

    def attach(self, app: web.Application) -> None:
        self.sio.attach(app)

    async def start(self) -> None:
        if self._pump is None:
            self._pump = asyncio.create_task(self._drain(), name="palaver-live-events")

    async def stop(self) -> None:
        self._stop_observing()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        with contextlib.suppress(Exception):
            await self.sio.shutdown()

    # -- publishing -------------------------------------------------------------------

    def _on_memory(self, event: MemoryEvent) -> None:
        """Memory's observer: take note and return (see the module docstring)."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.live_dropped.labels("queue_full").inc()

    def job_run(self, run: JobRunView) -> None:
        """A job run finished: to every client subscribed to "all"."""
        if self._subscribed:
            try:
                self.queue.put_nowait(("job_run", job_run_view(run), [ALL]))
            except asyncio.QueueFull:
                self.dropped += 1

    async def _drain(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                name, payload, rooms = item if isinstance(item, tuple) else render(item)
                await self.sio.emit(name, payload, to=rooms, skip_sid=self._behind() or None)
            except Exception:
                log.exception("a live event could not be sent")
            # Neither a full queue nor an emit (its send queues are unbounded) waits:
            # without this a burst would be sent in one go, holding up the turns.
            await asyncio.sleep(0)

    def _behind(self) -> list[str]:
        """Clients too far behind to be sent more now."""
        slow = []
        sockets = getattr(self.sio.eio, "sockets", {})
        for sid in self._subscribed:
            try:
                eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
                backlog = sockets[eio_sid].queue.qsize()
            except (KeyError, AttributeError):
                continue
            if backlog > self.client_backlog:
                slow.append(sid)
        if slow:
            self.skipped += len(slow)
            if self.metrics is not None:
                self.metrics.live_dropped.labels("client_behind").inc(len(slow))
        return slow

    def _observe(self) -> None:
        if self._unobserve is None:
            self._unobserve = self.manager.observe(self._on_memory)

    def _stop_observing(self) -> None:
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None

    # -- the clients ------------------------------------------------------------------

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        offered = auth.get("token") if isinstance(auth, dict) else None
        if not self.token.matches(offered):
            raise socketio.exceptions.ConnectionRefusedError(
                "authentication failed: send the admin token as auth={'token': ...}"
            )

    async def _disconnect(self, sid: str, *_reason: Any) -> None:
        self._subscribed.pop(sid, None)
        if not self._subscribed:
            self._stop_observing()

    async def _subscribe(self, sid: str, data: Any) -> dict[str, Any]:
        target = _room_of(data)
        if target is None:
            return {"ok": False, "error": 'subscribe to {"session": <id>} or {"all": true}'}
        await self.sio.enter_room(sid, target)
        self._subscribed.setdefault(sid, set()).add(target)
        self._observe()
        return {"ok": True, "room": target}

    async def _unsubscribe(self, sid: str, data: Any) -> dict[str, Any]:
        target = _room_of(data)
        if target is None:
            return {"ok": False, "error": 'unsubscribe from {"session": <id>} or {"all": true}'}
        await self.sio.leave_room(sid, target)
        rooms = self._subscribed.get(sid, set())
        rooms.discard(target)
        if not rooms:
            self._subscribed.pop(sid, None)
        if not self._subscribed:
            self._stop_observing()
        return {"ok": True, "room": target}

    async def _transcript_message(self, sid: str, data: Any) -> dict[str, Any]:
        try:
            return await self._add_line(data)
        except PalaverError as error:
            return {"ok": False, "error": str(error)}
        except Exception:
            log.exception("a transcript line failed")
            return {"ok": False, "error": "the line could not be stored"}

    async def _add_line(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            return {"ok": False, "error": "send an object: {session_id or chat, user_id, text}"}
        user_id, text = data.get("user_id"), data.get("text")
        name, message_id = data.get("display_name"), data.get("message_id")
        if not isinstance(user_id, str) or not user_id or len(user_id) > 100:
            return {"ok": False, "error": "user_id must be text of 1-100 characters"}
        if not isinstance(text, str):
            return {"ok": False, "error": "text must be text"}
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            return {"ok": False, "error": "display_name must be text of at most 200 characters"}
        if message_id is not None and (not isinstance(message_id, str) or len(message_id) > 100):
            return {"ok": False, "error": "message_id must be text of at most 100 characters"}
        session_id, chat = data.get("session_id"), data.get("chat")
        if (session_id is None) == (chat is None):
            return {"ok": False, "error": "name exactly one of session_id and chat"}
        if chat is not None:
            if not isinstance(chat, str) or chat.count(":") not in (1, 2):
                return {"ok": False, "error": "chat must be interface:chat_id[:thread_id]"}
            key = ChatKey.from_ref(chat if chat.count(":") == 2 else chat + ":")
            question = Question(key, Actor(key.interface, user_id, name), text, message_id, True)
            result = await self.dispatcher.turn.observe(question)
            if result.outcome is Outcome.REJECTED:
                return {"ok": False, "error": result.text}
            duplicate = result.outcome is Outcome.DUPLICATE
            return {"ok": True, "session_id": result.session_id, "duplicate": duplicate}
        if not isinstance(session_id, int) or isinstance(session_id, bool) or session_id < 1:
            return {"ok": False, "error": "session_id must be a positive whole number"}
        session = await self.manager.get(session_id)
        if session.status not in OPEN:
            return {
                "ok": False,
                "error": f"session {session_id} is {session.status.value}: lines can only "
                "be added to an active, idle or finalized session",
            }
        scope = (
            ChatKey.from_ref(session.chat_ref)
            if session.chat_ref
            else ChatKey("api", f"session-{session_id}")
        )
        stored = await self.manager.add_message(
            session_id,
            Role.USER,
            text,
            author_id=user_id,
            author_name=name,
            chat=scope,
            platform_message_id=message_id,
        )
        return {
            "ok": True,
            "session_id": session_id,
            "seq": stored.seq,
            "duplicate": stored.duplicate,
        }

    def stats(self) -> dict[str, int]:
        return {
            "clients": len(self._subscribed),
            "queued": self.queue.qsize(),
            "dropped": self.dropped,
            "skipped": self.skipped,
        }


def _room_of(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if data.get("all") is True:
        return ALL
    session = data.get("session")
    if isinstance(session, int) and not isinstance(session, bool) and session > 0:
        return room(session)
    return None
