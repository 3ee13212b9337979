"""The REST routes of sessions, import, stats and projects: HTTP in, plain values to
conversation.operations, JSON out. Nothing is decided here that the command line
does not decide the same way (it calls the same operations)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web

from conversation.export import MIME, SUFFIX
from conversation.operations import InvalidRequest, Operations, session_id_of


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _only(request: web.Request, *allowed: str) -> None:
    unknown = set(request.query) - set(allowed)
    if unknown:
        raise InvalidRequest(f"unknown parameter {sorted(unknown)[0]!r}")


class SessionRoutes:
    def __init__(self, operations: Operations, *, max_import_bytes: int) -> None:
        self.ops = operations
        self.max_import_bytes = max_import_bytes

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/sessions", self.list_sessions, allow_head=False),
            web.get("/api/sessions/{id}", self.get_session, allow_head=False),
            web.get("/api/sessions/{id}/messages", self.messages, allow_head=False),
            web.get("/api/sessions/{id}/summaries", self.summaries, allow_head=False),
            web.get("/api/sessions/{id}/export", self.export, allow_head=False),
            web.post("/api/sessions/{id}/end", self.end),
            web.delete("/api/sessions/{id}", self.delete),
            web.post("/api/import", self.import_export),
            web.get("/api/stats", self.stats, allow_head=False),
            web.get("/api/projects", self.projects, allow_head=False),
        ]

    @staticmethod
    def _id(request: web.Request) -> int:
        return session_id_of(request.match_info["id"])

    async def list_sessions(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        page = await self.ops.sessions(params)
        document = page.document()
        if params.get("stats", "").lower() in ("true", "1"):
            filters = {k: v for k, v in params.items() if k not in ("cursor", "limit", "stats")}
            document["totals"] = await self.ops.totals(filters)
        return _json(document)

    async def get_session(self, request: web.Request) -> web.Response:
        _only(request)
        return _json(await self.ops.session(self._id(request)))

    async def messages(self, request: web.Request) -> web.Response:
        page = await self.ops.messages(self._id(request), dict(request.query))
        return _json(page.document())

    async def summaries(self, request: web.Request) -> web.Response:
        _only(request)
        return _json({"items": await self.ops.summaries(self._id(request))})

    async def export(self, request: web.Request) -> web.StreamResponse:
        """The export, written page by page to a private file, streamed from it."""
        _only(request, "format", "files")
        session_id = self._id(request)
        kind = self.ops.export_format(request.query.get("format"))
        files = self.ops.export_files(request.query.get("files"))
        _info, path = await self.ops.export(session_id, kind, files=files)
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            # Gone from the disk at once: the open handle still reads it, and nothing
            # is left behind if the client or the process goes away mid-way.
            await asyncio.to_thread(path.unlink, missing_ok=True)
            size = os.fstat(handle.fileno()).st_size
            name = f"palaver-session-{session_id}{SUFFIX[kind]}"
            response = web.StreamResponse(
                headers={
                    "Content-Type": f"{MIME[kind]}; charset=utf-8",
                    "Content-Disposition": f'attachment; filename="{name}"',
                }
            )
            response.content_length = size
            await response.prepare(request)
            while chunk := await asyncio.to_thread(handle.read, 1 << 16):
                await response.write(chunk)
            await response.write_eof()
        finally:
            await asyncio.to_thread(handle.close)
        return response

    async def end(self, request: web.Request) -> web.Response:
        _only(request)
        return _json(await self.ops.end(self._id(request)))

    async def delete(self, request: web.Request) -> web.Response:
        _only(request)
        return _json(await self.ops.delete(self._id(request)))

    async def import_export(self, request: web.Request) -> web.Response:
        """A JSON export as the body: 201 when imported, 200 when it was here already."""
        _only(request)
        limit = self.max_import_bytes
        too_large = web.HTTPRequestEntityTooLarge(
            max_size=limit,
            actual_size=request.content_length or limit + 1,
            reason=f"an import is at most {limit:,} bytes (http.max_import_bytes)",
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            total += len(chunk)
            if total > limit:
                raise too_large
            chunks.append(chunk)
        result = await self.ops.import_export(b"".join(chunks))
        return _json(result, status=201 if result["imported"] else 200)

    async def stats(self, request: web.Request) -> web.Response:
        _only(request, "days")
        raw = request.query.get("days", "30")
        if not raw.isdigit() or len(raw) > 5:
            raise InvalidRequest("days must be a whole number from 1 to 3660")
        return _json(await self.ops.stats(int(raw)))

    async def projects(self, request: web.Request) -> web.Response:
        _only(request)
        return _json({"items": await self.ops.projects()})
