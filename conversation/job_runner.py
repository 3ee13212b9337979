"""Running a job: once across instances, every run recorded, never fatal.

``JobRunner`` is what the scheduler calls on time and what /jobs and
``run.py jobs run NAME`` call by hand; it needs no scheduler, so the command line
works on a freshly built app.

A run takes the job's lease in the database first (memory.store.jobs): while one
instance holds it, no other runs the job. The lease lasts ``lease_s`` and is renewed
every third of that while the job runs, so a long cleanup keeps it and a crashed
holder's lease runs out within ``lease_s``; when the run ends the lease is let go
at once. The run is recorded in ``job_runs`` from start to end: outcome (ok, failed,
cancelled, skipped), its counts (as far as it got, when it failed or was cancelled)
and the error. A failing job is recorded, logged and tried again at its next time;
it never stops the process or the other jobs.

Decided here:
- A scheduled run that finds the lease held, or finds a run of the job that began
  less than half a period ago and finished (two instances whose timers are out of
  step would otherwise run every job twice per period; a run whose holder crashed
  does not count), is not recorded: it did nothing, and ``list_jobs`` shows who
  holds the lease and the last run. A run by hand that finds the job
  running elsewhere is recorded as ``skipped``, with the holder in its error, so
  the operator sees why nothing happened.
- Times (the lease, the runs, the jobs' own "now") come from one injectable clock,
  ``now``; leases compare the instances' clocks, which a lease of minutes tolerates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from conversation.job_settings import JobsSettings
from conversation.jobs import CORE_JOBS, Job, JobContext, JobRun, JobStatus, Prunable, UnknownJob
from memory.errors import PalaverError
from memory.manager import SessionManager
from memory.store import utcnow

log = logging.getLogger(__name__)

_ERROR_CHARS = 2000
# How long stop() waits, after the grace, for cancelled runs to record themselves.
_RECORD_WAIT_S = 10.0


class JobsStopped(PalaverError):
    """The jobs are shutting down: no new run starts."""


def default_instance() -> str:
    """host:pid:random, so that a restarted process (or a container's pid 1) is a new
    instance and never mistakes an old lease for its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"[:120]


def describe_error(error: BaseException) -> str:
    """The error as a run records it: Palaver's own errors speak plain words already."""
    text = str(error) if isinstance(error, PalaverError) else f"{type(error).__name__}: {error}"
    return text[:_ERROR_CHARS]


class JobRunner:
    def __init__(
        self,
        manager: SessionManager,
        settings: JobsSettings,
        *,
        prunables: Mapping[str, Prunable] | None = None,
        now: Callable[[], datetime] = utcnow,
        jobs: Sequence[Job] = CORE_JOBS,
        renew_every_s: float | None = None,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.instance = settings.instance or default_instance()
        self.prunables: dict[str, Prunable] = dict(prunables or {})
        self.now = now
        self._jobs = {job.name: job for job in jobs}
        self._renew_every_s = renew_every_s or settings.lease_s / 3
        # Job name -> the task running its body, in this process.
        self._bodies: dict[str, asyncio.Task[dict[str, int]]] = {}
        # Tasks inside run(): stop waits for them to record their runs.
        self._runs: set[asyncio.Task[object]] = set()
        # Job name -> (outcome, error) for a body cancelled on purpose.
        self._why: dict[str, tuple[str, str]] = {}
        self._stopping = False
        # Called with every run once it is recorded (metrics, live events); an
        # observer that raises is logged and skipped, never fails the run.
        self.observers: list[Callable[[JobRun], None]] = []

    # -- what there is --------------------------------------------------------------

    @property
    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def job(self, name: str) -> Job:
        job = self._jobs.get(name.strip().lower().replace("-", "_"))
        if job is None:
            raise UnknownJob(f"there is no job {name!r}; the jobs are: {', '.join(self._jobs)}")
        return job

    def enabled(self, job: Job) -> bool:
        return self.settings.enabled and job.settings(self.settings).enabled

    @property
    def running(self) -> list[str]:
        """The jobs running in this process now."""
        return [name for name, body in self._bodies.items() if not body.done()]

    async def last_runs(self) -> dict[str, JobRun]:
        return await self.manager.last_job_runs(list(self._jobs))

    async def list_jobs(
        self, next_runs: Mapping[str, datetime | None] | None = None
    ) -> list[JobStatus]:
        """Every job, its schedule, last run (by any instance) and next run.

        ``next_runs`` are the scheduler's times; without them (the command line) the
        next run is estimated from the schedule and the last run.
        """
        last = await self.last_runs()
        leases = await self.manager.job_leases()
        now = self.now()
        tz = self.settings.tz
        statuses = []
        for job in self._jobs.values():
            settings = job.settings(self.settings)
            enabled = self.enabled(job)
            lease = leases.get(job.name)
            held = lease is not None and lease.expires_at > now
            if not enabled:
                next_run = None
            elif next_runs is not None:
                next_run = next_runs.get(job.name)
            elif settings.cron is not None:
                next_run = settings.trigger(tz).get_next_fire_time(None, now)
            elif job.name in last:
                next_run = last[job.name].started_at + settings.period(tz, now)
            else:
                next_run = None
            statuses.append(
                JobStatus(
                    name=job.name,
                    about=job.about,
                    enabled=enabled,
                    schedule=settings.describe(tz),
                    last_run=last.get(job.name),
                    next_run=next_run,
                    running_on=lease.holder if held and lease else None,
                    lease_until=lease.expires_at if held and lease else None,
                )
            )
        return statuses

    # -- running --------------------------------------------------------------------

    async def run_now(self, name: str) -> JobRun:
        """Run a job by hand, now, whatever its schedule (even when disabled); the run
        is recorded, and so is finding it running elsewhere (outcome ``skipped``)."""
        run = await self._run(self.job(name), scheduled=False)
        assert run is not None
        return run

    async def run_scheduled(self, name: str) -> JobRun | None:
        """The scheduler's call: None when another instance runs it or just did."""
        return await self._run(self.job(name), scheduled=True)

    async def _run(self, job: Job, *, scheduled: bool) -> JobRun | None:
        if self._stopping:
            raise JobsStopped("the jobs are shutting down; nothing new starts")
        task = asyncio.current_task()
        if task is not None:
            self._runs.add(task)
        try:
            return await self._leased(job, scheduled=scheduled)
        finally:
            if task is not None:
                self._runs.discard(task)

    async def _leased(self, job: Job, *, scheduled: bool) -> JobRun | None:
        now = self.now()
        lease = timedelta(seconds=self.settings.lease_s)
        recently = None
        if scheduled:
            recently = now - job.settings(self.settings).period(self.settings.tz, now) / 2
        try:
            taken = await self.manager.take_job_lease(
                job.name, self.instance, now=now, until=now + lease, not_started_since=recently
            )
        except asyncio.CancelledError:
            # The lease may have been committed just before the cancel arrived: let it
            # go (releasing one not held is a no-op), or the job waits lease_s; unless
            # a run of this job is going on here: the lease (held by this instance) is
            # that run's.
            running = self._bodies.get(job.name)
            if running is None or running.done():
                await self._let_go(job.name)
            raise
        if not taken:
            return await self._not_taken(job, now, scheduled=scheduled)
        if self._stopping:
            await self.manager.release_job_lease(job.name, self.instance, now=self.now())
            raise JobsStopped("the jobs are shutting down; nothing new starts")
        return await self._body(job, now)

    async def _not_taken(self, job: Job, now: datetime, *, scheduled: bool) -> JobRun | None:
        if scheduled:
            log.debug("job %s: running elsewhere, or done lately", job.name)
            return None
        held = (await self.manager.job_leases()).get(job.name)
        if held is not None and held.expires_at > now:
            why = (
                f"{job.name} is running on {held.holder} (its lease lasts until "
                f"{held.expires_at:%Y-%m-%d %H:%M:%S} UTC unless renewed)"
            )
        else:
            why = f"{job.name} was taken by another instance at the same moment"
        run_id = await self.manager.record_job_run(
            job.name, self.instance, "skipped", now=now, error=why
        )
        run = await self.manager.job_run(run_id)
        assert run is not None
        self._tell(run)
        return run

    def _tell(self, run: JobRun) -> None:
        for observer in self.observers:
            try:
                observer(run)
            except Exception:
                log.exception("a job run observer failed on %s", run.job)

    async def _body(self, job: Job, started: datetime) -> JobRun:
        try:
            run_id = await self.manager.start_job_run(job.name, self.instance, now=started)
        except BaseException:
            # Not even recorded (the database went away, or the run was cancelled as
            # it began): the lease goes with it.
            await self._let_go(job.name)
            raise
        if self._stopping:
            # stop() began while the run was being recorded: it saw no body to wait
            # for, so none may start now; the run is recorded as cancelled.
            why, finished = "cancelled at shutdown before it began", self.now()
            await asyncio.shield(self._record(job.name, run_id, "cancelled", {}, why, finished))
            self._tell(
                JobRun(run_id, job.name, self.instance, started, finished, "cancelled", {}, why)
            )
            raise JobsStopped("the jobs are shutting down; nothing new starts")
        ctx = JobContext(self.manager, self.settings, self.prunables, self.now)
        body = asyncio.create_task(job.run(ctx), name=f"palaver-job-{job.name}")
        self._bodies[job.name] = body
        renewer = asyncio.create_task(self._renew(job.name, body), name=f"palaver-lease-{job.name}")
        clock = time.perf_counter()
        reraise = False
        counts: dict[str, int]
        error: str | None = None
        try:
            counts = dict(await body)
            outcome = "ok"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            reraise = task is not None and task.cancelling() > 0
            outcome, error = self._why.pop(job.name, ("cancelled", "cancelled"))
            counts = dict(ctx.counts)
        except Exception as failure:
            outcome, error, counts = "failed", describe_error(failure), dict(ctx.counts)
            if isinstance(failure, PalaverError):
                log.warning("job %s failed: %s", job.name, error)
            else:
                log.error("job %s failed", job.name, exc_info=failure)
        finally:
            renewer.cancel()
            self._bodies.pop(job.name, None)
        finished = self.now()
        # Recorded even when the caller is being cancelled (the shield): a run
        # never stays "running" because the process was stopping.
        await asyncio.shield(self._record(job.name, run_id, outcome, counts, error, finished))
        run = JobRun(run_id, job.name, self.instance, started, finished, outcome, counts, error)
        self._tell(run)
        if reraise:
            raise asyncio.CancelledError
        level = logging.INFO if outcome != "ok" or any(counts.values()) else logging.DEBUG
        log.log(
            level,
            "job %s %s in %.2f s: %s",
            job.name,
            outcome,
            time.perf_counter() - clock,
            counts,
        )
        return run

    async def _let_go(self, name: str) -> None:
        """Release this instance's lease of ``name``, even from a cancelled task."""
        with contextlib.suppress(Exception):
            await asyncio.shield(
                self.manager.release_job_lease(name, self.instance, now=self.now())
            )

    async def _record(
        self,
        name: str,
        run_id: int,
        outcome: str,
        counts: dict[str, int],
        error: str | None,
        finished: datetime,
    ) -> None:
        try:
            await self.manager.finish_job_run(run_id, outcome, counts, error, now=finished)
        finally:
            # The lease goes even if the record could not be written (the database is
            # down): otherwise this job would wait lease_s for nothing.
            try:
                await self.manager.release_job_lease(name, self.instance, now=finished)
            except PalaverError as failure:
                log.warning("job %s: lease not released (%s); it runs out by itself", name, failure)

    async def _renew(self, name: str, body: asyncio.Task[dict[str, int]]) -> None:
        """Keep the lease while the body runs; if another instance took it (this one
        stalled past its expiry), stop the body: the job must not run twice."""
        lease = timedelta(seconds=self.settings.lease_s)
        while not body.done():
            await asyncio.sleep(self._renew_every_s)
            try:
                kept = await self.manager.renew_job_lease(
                    name, self.instance, until=self.now() + lease
                )
            except PalaverError as failure:
                log.warning("job %s: lease not renewed (%s); trying again", name, failure)
                continue
            if not kept:
                self._why[name] = ("failed", "another instance took its lease; stopped here")
                body.cancel()
                return

    async def stop(self, grace: float) -> None:
        """No new runs; runs in flight get ``grace`` seconds to finish, then they are
        cancelled and recorded as cancelled."""
        self._stopping = True
        bodies = {name: body for name, body in self._bodies.items() if not body.done()}
        if bodies:
            await asyncio.wait(bodies.values(), timeout=grace)
        for name, body in bodies.items():
            if not body.done():
                self._why[name] = ("cancelled", f"cancelled at shutdown after {grace:g} s")
                body.cancel()
        runs = [run for run in self._runs if not run.done() and run is not asyncio.current_task()]
        if runs:
            # They record their runs and let their leases go, which takes the database
            # a moment; one that is stuck beyond that is left to its lease's expiry.
            _, stuck = await asyncio.wait(runs, timeout=_RECORD_WAIT_S)
            if stuck:
                log.warning("%d job run(s) could not be recorded before shutdown", len(stuck))
