"""The ``api`` interface: chat through the conversation core over HTTP, the reply
streamed back as server-sent events.

``POST /api/chats/{chat}/messages`` with ``{"user_id", "display_name", "text"}``
runs a turn (or a command) as the interface "api" in the chat
``ChatKey("api", chat, thread)``, exactly as a Telegram or Discord message would:
same ordering, rate limit, commands, memory and delivery. The admin token is the
access (conversation.access lets the "api" interface in); the caller names the
participant. The response is ``text/event-stream``:

    event: delta     data: {"text": "...the next piece of the reply..."}
    event: replace   data: {"text": "...the whole reply so far..."}   (the model restarted)
    event: message   data: {"text": "...", "markdown": true}          (a final text)
    event: file      data: {"name", "mime_type", "caption", "content_base64"}
    event: offer     data: {"text", "choices": [{"label", "data"}]}  (e.g. a tool approval)
    event: done      data: {"session_id": 12}

A choice is pressed with ``POST /api/chats/{chat}/choices`` ``{"user_id", "data"}``
(while the request that offered it is still streaming); the answer says what it did.

A reply stored while no client listens cannot be streamed: one owed after a restart
(or whose client went away mid-turn) is kept, marked undeliverable, and is the
first thing streamed on the chat's next message ("I couldn't deliver this answer
earlier: ..."); it is readable meanwhile in the session's messages and was sent as
a live ``message`` event when it was stored.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from conversation.access import Actor
from conversation.dispatcher import Dispatcher
from conversation.inbound import Inbound
from conversation.outbound import Outbound, OutboundFile, ReplyStream, Unreachable
from memory.types import ChatKey

log = logging.getLogger(__name__)

NAME = "api"
CHAT_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
UPLOAD_LIMIT = 8 << 20  # files (an /export) travel base64 in one event
GONE = "the API client went away; the reply is kept and sent first on the chat's next message"
DETACHED = (
    "no API client is connected to stream this to; it is kept and sent first on the "
    "chat's next message"
)


class ChoiceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    user_id: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    display_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    data: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    thread: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,100}$")] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    user_id: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    display_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    text: Annotated[str, StringConstraints(min_length=1, max_length=1_000_000)]
    # The caller's id for this message: the same id twice is answered once. Without
    # one, a fresh id is made (a message cut off by a restart is still answered).
    message_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    thread: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,100}$")] | None = None
    group: bool = False  # several participants: the model sees who said what


_M = TypeVar("_M", bound=BaseModel)


def _validated(model: type[_M], raw: bytes) -> _M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise web.HTTPBadRequest(reason=f"{where}: {first['msg']}") from None


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class SsePort:
    """The outbound port of one API request: events on its open response."""

    upload_limit = UPLOAD_LIMIT

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._closed = False
        self._lock = asyncio.Lock()

    async def write(self, name: str, data: dict[str, Any]) -> None:
        if self._closed:
            raise Unreachable(GONE)
        async with self._lock:
            try:
                await self._response.write(_event(name, data))
            except (ConnectionError, RuntimeError) as error:
                self._closed = True
                raise Unreachable(GONE) from error

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def close(self) -> None:
        self._closed = True

    async def send(self, text: str, *, markdown: bool = False, skip: int = 0) -> None:
        if skip:  # one part, shown already
            return
        await self.write("message", {"text": text, "markdown": markdown})

    async def send_file(self, file: OutboundFile, caption: str) -> None:
        data = await asyncio.to_thread(file.path.read_bytes)
        await self.write(
            "file",
            {
                "name": file.name,
                "mime_type": file.mime_type,
                "caption": caption,
                "content_base64": base64.b64encode(data).decode("ascii"),
            },
        )

    async def offer(self, text: str, choices: Sequence[tuple[str, str]]) -> None:
        listed = [{"label": label, "data": data} for label, data in choices]
        await self.write("offer", {"text": text, "choices": listed})

    def stream(self) -> ReplyStream:
        return _SseStream(self)

    def private(self) -> Outbound | None:
        return None  # the caller alone reads the response

    def private_hint(self, command: str) -> str:
        return f"Send /{command} again."


class _SseStream:
    """The reply as it grows: deltas, skipped while the client is slow to read (the
    next one carries what was skipped), never holding up the turn."""

    def __init__(self, port: SsePort) -> None:
        self._port = port
        self._sent = ""

    async def update(self, text: str) -> None:
        if self._port.busy:
            return
        try:
            if text.startswith(self._sent):
                if len(text) > len(self._sent):
                    await self._port.write("delta", {"text": text[len(self._sent) :]})
            else:
                await self._port.write("replace", {"text": text})
        except Unreachable:
            return
        self._sent = text

    async def finish(self, text: str) -> None:
        await self._port.send(text, markdown=True)

    async def close(self) -> None:
        return None


class _DetachedStream:
    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        raise Unreachable(DETACHED)

    async def close(self) -> None:
        return None


class DetachedPort:
    """A port to an API chat that no request holds open (see the module docstring)."""

    upload_limit = UPLOAD_LIMIT

    async def send(self, text: str, *, markdown: bool = False, skip: int = 0) -> None:
        raise Unreachable(DETACHED)

    async def send_file(self, file: OutboundFile, caption: str) -> None:
        raise Unreachable(DETACHED)

    async def offer(self, text: str, choices: Sequence[tuple[str, str]]) -> None:
        raise Unreachable(DETACHED)

    def stream(self) -> ReplyStream:
        return _DetachedStream()

    def private(self) -> Outbound | None:
        return None

    def private_hint(self, command: str) -> str:
        return f"Send /{command} again."


class ApiInterface:
    """The "api" interface to the core (conversation.outbound.Interface)."""

    name = NAME

    def __init__(self, dispatcher: Dispatcher, *, wait_for_missed_s: float = 10.0) -> None:
        self.dispatcher = dispatcher
        self.wait_for_missed_s = wait_for_missed_s
        self.receiving = False
        self._handling: set[asyncio.Task[None]] = set()

    # -- Interface ------------------------------------------------------------------

    async def start(self) -> None:
        self.receiving = True

    async def stop_receiving(self) -> None:
        self.receiving = False

    async def stop(self) -> None:
        for task in list(self._handling):
            task.cancel()
        await asyncio.gather(*self._handling, return_exceptions=True)

    def outbound(self, key: ChatKey, reply_to: str | None) -> Outbound:
        return DetachedPort()

    def is_private(self, key: ChatKey) -> bool:
        return True

    @property
    def connected(self) -> bool:
        return self.receiving

    # -- the route ------------------------------------------------------------------

    async def post_message(self, request: web.Request) -> web.StreamResponse:
        if not self.receiving:
            raise web.HTTPServiceUnavailable(
                reason="Palaver is shutting down; send the message again in a minute"
            )
        chat = request.match_info["chat"]
        if not CHAT_ID.match(chat):
            raise web.HTTPBadRequest(
                reason="chat must be 1-100 letters, digits or _ . @ - (no colons)"
            )
        body = _validated(ChatRequest, await request.read())
        key = ChatKey(NAME, chat, body.thread)
        inbound = Inbound(
            key,
            Actor(NAME, body.user_id, body.display_name),
            body.text,
            body.message_id or uuid.uuid4().hex,
            private=not body.group,
            addressed=True,
        )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        port = SsePort(response)
        # A client that goes away never cuts a turn short: the turn runs on its own.
        task = asyncio.create_task(self.dispatcher.handle(inbound, port))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)
        try:
            await asyncio.shield(task)
            await self._missed_delivered(key)
            session = await self.dispatcher.turn.manager.find_by_chat(key)
            await port.write("done", {"session_id": session.id if session else None})
        except Unreachable:
            pass
        finally:
            port.close()
        return response

    async def post_choice(self, request: web.Request) -> web.Response:
        """A press of one of the choices an ``offer`` event showed."""
        chat = request.match_info["chat"]
        if not CHAT_ID.match(chat):
            raise web.HTTPBadRequest(
                reason="chat must be 1-100 letters, digits or _ . @ - (no colons)"
            )
        body = _validated(ChoiceRequest, await request.read())
        key = ChatKey(NAME, chat, body.thread)
        said = self.dispatcher.choose(key, Actor(NAME, body.user_id, body.display_name), body.data)
        return web.json_response({"text": said})

    async def _missed_delivered(self, key: ChatKey) -> None:
        """Replies the chat missed are sent through this request's port in the
        background (conversation.delivery): keep the stream open until they are."""
        outbox = self.dispatcher.outbox
        deadline = time.monotonic() + self.wait_for_missed_s
        while outbox.queued(key) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # the outbox has no event to wait on
