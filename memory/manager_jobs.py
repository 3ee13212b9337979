"""What the scheduled jobs do to memory: the lifecycle's batches, retention of files
and Claude Code sessions, database upkeep, and the job runs and leases they are
recorded and coordinated by. Part of ``SessionManager`` (memory.manager): a mixin,
so that the one door stays one class in modules of one concern each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from memory.code_sessions import CodeSessions
from memory.lifecycle import Lifecycle, Progress
from memory.settings import MemorySettings
from memory.spend import SpendTracker
from memory.store import Store, utcnow
from memory.store.jobs import JobLease, JobRun
from memory.transcripts import TranscriptStore
from memory.upkeep import upkeep

# A blob no message links to is deleted once unused for this long (an append that is
# about to link to it has had ample time).
_ORPHAN_GRACE = timedelta(hours=1)


class JobsView:
    # What SessionManager provides.
    store: Store
    settings: MemorySettings
    transcripts: TranscriptStore
    _code: CodeSessions
    _lifecycle: Lifecycle
    _spend: SpendTracker

    # -- lifecycle (see memory.lifecycle) ---------------------------------------------

    async def finalize_idle(
        self, *, now: datetime | None = None, batch: int = 100, progress: Progress | None = None
    ) -> dict[str, int]:
        return await self._lifecycle.finalize_idle(now=now, batch=batch, progress=progress)

    async def expire_sessions(
        self, *, now: datetime | None = None, batch: int = 100, progress: Progress | None = None
    ) -> dict[str, int]:
        return await self._lifecycle.expire(now=now, batch=batch, progress=progress)

    async def delete_expired(
        self, *, now: datetime | None = None, batch: int = 500, progress: Progress | None = None
    ) -> dict[str, int]:
        return await self._lifecycle.delete_expired(now=now, batch=batch, progress=progress)

    async def upgrade_fallback_summaries(
        self, *, batch: int = 20, progress: Progress | None = None
    ) -> dict[str, int]:
        return await self._lifecycle.upgrade_fallbacks(batch=batch, progress=progress)

    def prune(self) -> int:
        """Forget the per-user spend figures cached in this process (re-read on use)."""
        return self._spend.prune()

    async def upkeep(self, *, journal_size_limit: int) -> dict[str, int]:
        """Database upkeep (memory.upkeep): statistics, and the SQLite WAL bounded."""
        return await upkeep(self.store.db, journal_size_limit=journal_size_limit)

    # -- retention beyond sessions ------------------------------------------------------

    async def delete_orphaned_attachments(self) -> int:
        """Delete the blobs no message links to any more (their messages were deleted
        by retention), unused for an hour; returns how many. For the cleanup job,
        after ``delete_expired``."""
        deleted = 0
        while True:
            batch = await self.store.attachments.delete_orphans(utcnow() - _ORPHAN_GRACE)
            deleted += batch
            if batch < 500:
                return deleted

    async def delete_unused_code_sessions(
        self, *, now: datetime | None = None, batch: int = 500, progress: Progress | None = None
    ) -> dict[str, int]:
        """Claude Code sessions a project no longer resumes (reset, replaced or lost)
        and unused for ``retain_for_s`` are deleted with their transcripts: the
        transcripts first, so that a failure half-way leaves the row to try again.
        For the cleanup job. Counts: code_sessions, transcript_lines."""
        before = (now or utcnow()) - timedelta(seconds=self.settings.retain_for_s)
        totals: Counter[str] = Counter()
        while unused := await self._code.unused_since(before, limit=batch):
            ids = [session.session_id for session in unused]
            lines = await self.transcripts.delete_sessions(ids)
            done = Counter(
                code_sessions=await self._code.delete_sessions(ids), transcript_lines=lines
            )
            totals.update(done)
            if progress is not None:
                await progress(done)
            if len(unused) < batch:
                break
        return {"code_sessions": 0, "transcript_lines": 0, **totals}

    # -- job runs and leases (memory.store.jobs) ------------------------------------

    async def start_job_run(self, job: str, instance: str, *, now: datetime) -> int:
        return await self.store.jobs.start(job, instance, now=now)

    async def finish_job_run(
        self,
        run_id: int,
        outcome: str,
        counts: Mapping[str, int],
        error: str | None,
        *,
        now: datetime,
    ) -> None:
        await self.store.jobs.finish(run_id, outcome, counts, error, now=now)

    async def record_job_run(
        self, job: str, instance: str, outcome: str, *, now: datetime, error: str | None
    ) -> int:
        return await self.store.jobs.record(job, instance, outcome, now=now, error=error)

    async def job_run(self, run_id: int) -> JobRun | None:
        return await self.store.jobs.get(run_id)

    async def last_job_runs(self, jobs: Sequence[str]) -> dict[str, JobRun]:
        return await self.store.jobs.latest(jobs)

    async def job_history(self, job: str, *, limit: int = 20) -> list[JobRun]:
        return await self.store.jobs.history(job, limit=limit)

    async def delete_job_runs(self, job: str, *, before: datetime, limit: int) -> int:
        return await self.store.jobs.delete_before(job, before, limit=limit)

    async def take_job_lease(
        self,
        job: str,
        holder: str,
        *,
        now: datetime,
        until: datetime,
        not_started_since: datetime | None = None,
    ) -> bool:
        return await self.store.jobs.take_lease(
            job, holder, now=now, until=until, not_started_since=not_started_since
        )

    async def renew_job_lease(self, job: str, holder: str, *, until: datetime) -> bool:
        return await self.store.jobs.renew_lease(job, holder, until=until)

    async def release_job_lease(self, job: str, holder: str, *, now: datetime) -> None:
        await self.store.jobs.release_lease(job, holder, now=now)

    async def job_leases(self) -> dict[str, JobLease]:
        return await self.store.jobs.leases()
