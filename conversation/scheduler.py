"""The core jobs on a timetable: APScheduler 3's AsyncIOScheduler on the app's one
event loop, firing ``JobRunner.run_scheduled`` for every enabled job.

Each job runs at most once at a time here (``max_instances=1``), and other
instances are kept off by the runner's lease. Runs that fall due while the loop
is busy, or the machine sleeps, are coalesced into one run that happens however
late (``misfire_grace_time=None``): these jobs catch up on whatever is due, so a
late run is never worse than a skipped one.

The job store is in memory, so APScheduler knows nothing of the time before this
process started. ``job_runs`` does: at start an interval job is due its interval
after its last run by any instance (at once, after a short settling delay, if
that is past or it never ran), and a cron job whose last fire time passed without
a run runs once, soon. A process restarted more often than a job's interval still
runs it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, tzinfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from conversation.job_runner import JobRunner, JobsStopped
from conversation.job_settings import JobSettings
from conversation.jobs import JobRun, JobStatus

log = logging.getLogger(__name__)

# A job that is due when the process starts waits this long (or its interval, if
# shorter), so that start-up work and the first turns come first.
_SETTLE_S = 30.0


def first_run(
    settings: JobSettings, last: JobRun | None, now: datetime, timezone: tzinfo
) -> datetime | None:
    """When a job first runs in this process, given its last run by any instance."""
    period = settings.period(timezone, now)
    soon = now + min(timedelta(seconds=_SETTLE_S), period)
    if settings.every is not None:
        if last is None:
            return soon
        return max(last.started_at + period, soon)
    trigger = settings.trigger(timezone)
    upcoming: datetime | None = trigger.get_next_fire_time(None, now)
    if last is not None:
        after_last = trigger.get_next_fire_time(None, last.started_at + timedelta(seconds=1))
        if after_last is not None and after_last < now:
            return soon  # a fire time passed while no instance ran it
    return upcoming


class Scheduler:
    """Starts and stops with the app: ``await start()``, ``await stop(grace)``."""

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self._scheduler: AsyncIOScheduler | None = None

    @property
    def apscheduler(self) -> AsyncIOScheduler | None:
        """The APScheduler instance while started (to inspect its jobs)."""
        return self._scheduler

    async def start(self) -> None:
        """Register the enabled jobs with their triggers and start the timetable."""
        runner = self.runner
        if self._scheduler is not None:
            return
        tz = runner.settings.tz
        scheduler = AsyncIOScheduler(
            timezone=tz,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        last = await runner.last_runs()
        now = runner.now()
        for job in runner.jobs:
            if not runner.enabled(job):
                continue
            settings = job.settings(runner.settings)
            scheduler.add_job(
                self._fire,
                trigger=settings.trigger(tz),
                args=(job.name,),
                id=job.name,
                name=job.name,
                next_run_time=first_run(settings, last.get(job.name), now, tz),
            )
        scheduler.start()
        self._scheduler = scheduler
        log.info(
            "jobs scheduled as %s: %s",
            runner.instance,
            ", ".join(f"{j.id} {j.next_run_time:%H:%M:%S}" for j in scheduler.get_jobs()) or "none",
        )

    async def _fire(self, name: str) -> None:
        """APScheduler's job: never raises, so one job's failure stops nothing."""
        try:
            await self.runner.run_scheduled(name)
        except JobsStopped:
            pass
        except Exception:
            # The runner records the job's own failures; this is the database
            # failing before a run could even be recorded.
            log.exception("job %s could not run", name)

    def next_runs(self) -> dict[str, datetime | None]:
        if self._scheduler is None:
            return {}
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    async def list_jobs(self) -> list[JobStatus]:
        return await self.runner.list_jobs(
            next_runs=self.next_runs() if self._scheduler is not None else None
        )

    async def run_now(self, name: str) -> JobRun:
        return await self.runner.run_now(name)

    async def stop(self, grace: float) -> None:
        """Start nothing new; let a running job finish for up to ``grace`` seconds,
        then cancel it (recorded as cancelled); stop the timetable."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.pause()
        await self.runner.stop(grace)
        if scheduler is not None:
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop's next turn
