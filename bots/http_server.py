"""The operator surface: one aiohttp server in the process's loop, off unless
``[http] enabled``. REST for sessions, transcripts, summaries, export and import,
stats, projects and jobs; chat as the "api" interface (server-sent events);
Socket.IO live events; Prometheus /metrics; /healthz and /readyz.

Every route but /healthz needs the admin token (bots.http_auth); Socket.IO checks it
in its connect handler. Every error is JSON, ``{"error": "..."}``, in plain words.
The server starts and stops with its interface (``api``): ``start()`` binds, and
refuses a host other machines can reach without a token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from aiohttp import web

from bots.http_auth import AdminToken, check_binding
from bots.http_chat import ApiInterface
from bots.http_jobs import JobControl, JobRoutes
from bots.http_openapi import document
from bots.http_sessions import SessionRoutes
from bots.http_settings import HttpSettings
from bots.live_events import JobRunView, LiveEvents
from bots.metrics import CONTENT_TYPE, Metrics
from conversation.dispatcher import Dispatcher
from conversation.importing import ImportRefused
from conversation.operations import Operations
from conversation.outbound import Interface
from memory.errors import (
    InvalidMessage,
    PalaverError,
    ProjectNotFound,
    SessionNotFound,
    SessionNotOpen,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

VERSION = "1"
OPEN_PATHS = frozenset({"/healthz"})
SOCKET_PATH = "/socket.io/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@runtime_checkable
class Readiness(Protocol):
    """An interface that can say whether it is connected to its platform."""

    @property
    def connected(self) -> bool: ...


def _status_of(error: PalaverError) -> int:
    """The status of an expected failure; anything else the caller sent is a 400."""
    if isinstance(error, SessionNotFound | ProjectNotFound):
        return 404
    if isinstance(error, SessionNotOpen):
        return 409
    if isinstance(error, StoreUnavailable):
        return 503
    if isinstance(error, ImportRefused | InvalidMessage):
        return 422
    return 400


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class OperatorServer:
    """Build it, hand ``api`` to the application's interfaces; it serves from
    ``api.start()`` to ``api.stop()``."""

    def __init__(
        self,
        settings: HttpSettings,
        token: str | None,
        dispatcher: Dispatcher,
        exports: Path,
    ) -> None:
        self.settings = settings
        self.token = AdminToken(token)
        self.dispatcher = dispatcher
        manager = dispatcher.turn.manager
        self.manager = manager
        self.metrics = Metrics(manager)
        self.operations = Operations(manager, exports, settings.max_page_size)
        self.live = LiveEvents(
            dispatcher,
            self.token,
            queue_size=settings.live_queue,
            client_backlog=settings.live_client_backlog,
            metrics=self.metrics,
        )
        self.job_routes = JobRoutes()
        self.api = _ServedApi(self, dispatcher, settings.chat_wait_for_missed_s)
        self.watched: list[Interface] = []
        self._runner: web.AppRunner | None = None
        self._unhook: list[Callable[[], None]] = []
        self.port: int | None = None
        self.app = self._build()

    # -- wiring ---------------------------------------------------------------------

    @property
    def jobs(self) -> JobControl | None:
        return self.job_routes.jobs

    @jobs.setter
    def jobs(self, control: JobControl | None) -> None:
        """The scheduler, where jobs run in this process (else the routes say 503)."""
        self.job_routes.jobs = control

    def watch(self, interfaces: Sequence[Interface]) -> ApiInterface:
        """The interfaces /readyz checks; returns the "api" interface to add to them."""
        self.watched = [i for i in interfaces if i is not self.api]
        return self.api

    def job_finished(self, run: JobRunView) -> None:
        """A job run was recorded: metrics, and a live ``job_run`` event. The job
        runner calls this for every run it records, scheduled or by hand."""
        self.metrics.job_run(run)
        self.live.job_run(run)

    def _build(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors, self._guard], client_max_size=self.settings.max_body_bytes
        )
        sessions = SessionRoutes(self.operations, max_import_bytes=self.settings.max_import_bytes)
        app.add_routes(sessions.routes())
        app.add_routes(self.job_routes.routes())
        app.add_routes(
            [
                web.post("/api/chats/{chat}/messages", self.api.post_message),
                web.post("/api/chats/{chat}/choices", self.api.post_choice),
                web.get("/api/openapi.json", self.openapi, allow_head=False),
                web.get("/healthz", self.healthz, allow_head=False),
                web.get("/readyz", self.readyz, allow_head=False),
                web.get("/metrics", self.prometheus, allow_head=False),
            ]
        )
        self.live.attach(app)
        return app

    # -- middlewares ----------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            if error.status == 404 and error.reason == "Not Found":
                message = f"there is no route {request.method} {request.path}"
            elif error.status == 405:
                message = f"{request.method} is not allowed on {request.path}"
            else:
                message = error.reason
            headers = {k: v for k, v in error.headers.items() if k == "WWW-Authenticate"}
            return _error(error.status, message, **headers)
        except PalaverError as error:
            return _error(_status_of(error), str(error))
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, "internal error; the details are in Palaver's log")

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in OPEN_PATHS or path.startswith(SOCKET_PATH):
            return await handler(request)
        if not self.token.configured:
            return _error(
                401, "this API is closed: set PALAVER_ADMIN_TOKEN in Palaver's environment"
            )
        if not self.token.matches_header(request.headers.get("Authorization")):
            return _error(
                401,
                "missing or wrong admin token: send Authorization: Bearer <PALAVER_ADMIN_TOKEN>",
                **{"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    # -- health, metrics, the document ------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {}
        try:
            await self.manager.ping()
            checks["database"] = "ok"
        except PalaverError as error:
            checks["database"] = str(error)
        for interface in self.watched:
            connected = interface.connected if isinstance(interface, Readiness) else True
            checks[interface.name] = "connected" if connected else "not connected"
        ready = all(v in ("ok", "connected") for v in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def prometheus(self, request: web.Request) -> web.Response:
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(document(VERSION))

    # -- serving --------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            return
        settings = self.settings
        check_binding(settings.host, self.token)
        if not self.token.configured:
            log.warning("PALAVER_ADMIN_TOKEN is not set: every route but /healthz refuses")
        turn = self.dispatcher.turn
        turn.observers.append(self.metrics.turn_done)
        self._unhook = [
            lambda: turn.observers.remove(self.metrics.turn_done),
            self.manager.observe(self.metrics.memory_event),
        ]
        runner = web.AppRunner(self.app, handle_signals=False, access_log=log)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise PalaverError(
                f"the HTTP server cannot listen on {settings.host}:{settings.port}: "
                f"{error.strerror or error}"
            ) from None
        self._runner = runner
        await self.live.start()
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else settings.port
        log.info("operator API on http://%s:%s", settings.host, self.port)

    async def stop(self) -> None:
        for unhook in self._unhook:
            unhook()
        self._unhook = []
        await self.live.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


class _ServedApi(ApiInterface):
    """The "api" interface, starting and stopping the server it is served by."""

    def __init__(self, server: OperatorServer, dispatcher: Dispatcher, wait: float) -> None:
        super().__init__(dispatcher, wait_for_missed_s=wait)
        self._server = server

    async def start(self) -> None:
        await self._server.start()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self._server.stop()
