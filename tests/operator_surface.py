"""The operator surface for tests: the real server on a free local port, over the core
as the application builds it, and a real HTTP client in front of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agents.base import AgentEvent, AgentReply, AgentRequest, TextDelta
from bots.http_server import OperatorServer
from bots.http_settings import HttpSettings
from conversation.dispatcher import Dispatcher
from conversation.settings import AccessSettings
from memory.manager import SessionManager
from memory.types import Role, Usage
from tests.core import make_dispatcher

TOKEN = "s3cret-admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Echo:
    """A model that streams ``echo: <last user message>`` in two pieces, and reports
    usage as the Messages API would."""

    name = "echo"

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream(request)

    async def _stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        last = next(m for m in reversed(request.context.messages) if m.role is Role.USER)
        text = f"echo: {last.text}"
        yield TextDelta(text[:3])
        yield TextDelta(text[3:])
        yield AgentReply(text, Usage(120, 8, 30, 4, 0.0021), request.model)


@dataclass
class Surface:
    server: OperatorServer
    dispatcher: Dispatcher
    manager: SessionManager
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.server.url

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path, params=params, headers=AUTH) as response:
            return response.status, await _body(response)

    async def send(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        async with self.http.request(method, self.url + path, data=data, headers=AUTH) as response:
            return response.status, await _body(response)

    async def chat(self, chat: str, text: str, **fields: Any) -> list[tuple[str, Any]]:
        """POST a chat message; the server-sent events, parsed."""
        body = {"user_id": "u1", "display_name": "Ada", "text": text, **fields}
        async with self.http.post(
            f"{self.url}/api/chats/{chat}/messages", json=body, headers=AUTH
        ) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            raw = await response.text()
        events = []
        for block in raw.split("\n\n"):
            if not block.strip():
                continue
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            events.append((lines["event"], json.loads(lines["data"])))
        return events


async def _body(response: aiohttp.ClientResponse) -> Any:
    if response.content_type == "application/json":
        return await response.json()
    return await response.read()


async def start_surface(
    manager: SessionManager,
    tmp_path: Path,
    *,
    token: str | None = TOKEN,
    **settings: Any,
) -> Surface:
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)  # the data dir
    dispatcher = make_dispatcher(
        manager, Echo(), access=AccessSettings(), exports=tmp_path / "exports"
    )
    server = OperatorServer(
        HttpSettings(enabled=True, port=0, **settings), token, dispatcher, tmp_path / "exports"
    )
    api = server.watch([])
    await api.start()
    return Surface(server, dispatcher, manager, aiohttp.ClientSession())


async def stop_surface(surface: Surface) -> None:
    await surface.http.close()
    await surface.server.api.stop_receiving()
    await surface.dispatcher.drain(1.0)
    await surface.server.api.stop()
