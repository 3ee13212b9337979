"""The job routes: list the scheduled jobs, run one now.

The jobs live in the scheduler (conversation.scheduler's ``Scheduler`` or its
``JobRunner``); this module needs only what ``JobControl`` says. Without one (the
jobs do not run in this process) both routes answer 503.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from bots.live_events import JobRunView, job_run_view
from conversation.job_runner import JobsStopped
from memory.errors import PalaverError

NO_JOBS = "jobs are not running in this process"
JOB_NAME_CHARS = 60


class JobControl(Protocol):
    """What the job routes use of the scheduler."""

    async def list_jobs(self) -> Sequence[object]: ...

    async def run_now(self, name: str) -> JobRunView: ...


def plain(value: Any) -> Any:
    """A job's status or run as JSON: dataclasses as objects, times as ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class JobRoutes:
    def __init__(self) -> None:
        # Set by the application when jobs run here; its runner reports every
        # recorded run (these included) to OperatorServer.job_finished itself.
        self.jobs: JobControl | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/jobs", self.list_jobs, allow_head=False),
            web.post("/api/jobs/{name}/run", self.run_job),
        ]

    def _control(self) -> JobControl:
        if self.jobs is None:
            raise web.HTTPServiceUnavailable(reason=NO_JOBS)
        return self.jobs

    async def list_jobs(self, request: web.Request) -> web.Response:
        jobs = await self._control().list_jobs()
        return web.json_response({"items": [plain(job) for job in jobs]})

    async def run_job(self, request: web.Request) -> web.Response:
        control = self._control()
        name = request.match_info["name"]
        known = [getattr(job, "name", None) for job in await control.list_jobs()]
        if len(name) > JOB_NAME_CHARS or name not in known:
            listed = ", ".join(str(n) for n in known)
            raise web.HTTPNotFound(
                reason=f"there is no job {name[:JOB_NAME_CHARS]!r}; the jobs are: {listed}"
            )
        try:
            run = await control.run_now(name)
        except PalaverError as error:
            status = 503 if isinstance(error, JobsStopped) else 409
            return web.json_response({"error": str(error)}, status=status)
        return web.json_response(job_run_view(run))
