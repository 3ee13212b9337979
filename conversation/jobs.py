"""The core jobs: what runs by itself to keep memory bounded and sessions moving
through their lifecycle (memory.lifecycle), each an async function of a small
context that returns what it did as counts.

- ``finalize``: quiet sessions become idle and get their closing summary;
- ``expire``: sessions quiet past ``expire_after_s`` are expired (and summarized if
  the finalize job never reached them), so the chat's next message starts afresh;
- ``cleanup``: expired and ended sessions past ``retain_for_s`` are deleted with
  their messages, summaries and events, then the files no message links any more,
  Claude Code sessions no project resumes unused as long (with their transcripts),
  and job runs older than ``keep_runs_s``;
- ``upgrade_summaries``: summaries the extractive fallback wrote are rewritten by the
  Claude summarizer once it answers again;
- ``upkeep``: database statistics, and SQLite's WAL folded in and truncated;
- ``prune``: per-user state kept in this process (rate-limit buckets, notice
  windows, the spend cache) forgets what has lapsed.

The jobs work in batches and report each batch to ``JobContext.progress``, which
keeps a running tally (recorded even when a run fails or is cancelled half-way)
and pauses, so that turns go on while a job runs. Running them,
once across instances, and recording every run is conversation.job_runner's work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from conversation.job_settings import JobSettings, JobsSettings
from memory.errors import PalaverError
from memory.manager import SessionManager
from memory.store.jobs import JobRun

__all__ = [
    "CORE_JOBS",
    "Job",
    "JobContext",
    "JobFailed",
    "JobRun",
    "JobStatus",
    "Prunable",
    "UnknownJob",
]

log = logging.getLogger(__name__)

# The longest pause between two batches: a batch that waited on the model (a
# closing summary) is not followed by as long a pause.
_MAX_PAUSE_S = 0.2


class Prunable(Protocol):
    """Per-user state kept in memory that can forget what has lapsed."""

    def prune(self) -> int:
        """Drop what is no longer needed; returns how many entries went."""
        ...


class UnknownJob(PalaverError):
    """No job by that name; the message lists the jobs there are."""


class JobFailed(PalaverError):
    """A job did part of its work and failed at the rest (said in the message)."""


class JobContext:
    """What a job works with: the memory, the settings, the clock, and the tally."""

    def __init__(
        self,
        manager: SessionManager,
        settings: JobsSettings,
        prunables: Mapping[str, Prunable],
        now: Callable[[], datetime],
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.prunables = prunables
        self.now = now
        # What this run has done so far: recorded as it stands if the run fails or
        # is cancelled half-way.
        self.counts: Counter[str] = Counter()
        self._batch_began = time.perf_counter()

    async def progress(self, counts: Mapping[str, int]) -> None:
        """One batch is done: count it, and step aside before the next.

        The pause is ``pause_ratio`` times as long as the batch took (at most
        ``_MAX_PAUSE_S``). Yielding alone is not enough: back-to-back transactions
        keep SQLite's one writer busy, so every write of every turn queues behind
        one, and they keep the driver's thread busy, which starves the event loop
        of the GIL (bench/jobs.py, SQLite, batches of 500, 200 turns/s: turn p99
        44 ms with yields alone, 7 ms with pauses twice as long as the batches).
        A batch that took long because turns were writing makes a longer pause:
        the job backs off under load, and takes about three times as long.
        """
        self.counts.update(counts)
        took = time.perf_counter() - self._batch_began
        await asyncio.sleep(min(took * self.settings.pause_ratio, _MAX_PAUSE_S))
        self._batch_began = time.perf_counter()


JobFunction = Callable[[JobContext], Coroutine[Any, Any, dict[str, int]]]


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    about: str
    run: JobFunction

    def settings(self, jobs: JobsSettings) -> JobSettings:
        return jobs.of(self.name)


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job as /jobs and ``jobs list`` show it."""

    name: str
    about: str
    enabled: bool
    schedule: str
    last_run: JobRun | None
    # When it runs next: the scheduler's time when it is running, else an estimate
    # (the last run plus the interval, or the next cron time); None if disabled.
    next_run: datetime | None
    # Who runs it right now (any instance), while its lease lasts.
    running_on: str | None
    lease_until: datetime | None


async def finalize(ctx: JobContext) -> dict[str, int]:
    return await ctx.manager.finalize_idle(
        now=ctx.now(), batch=ctx.settings.finalize.batch, progress=ctx.progress
    )


async def expire(ctx: JobContext) -> dict[str, int]:
    return await ctx.manager.expire_sessions(
        now=ctx.now(), batch=ctx.settings.expire.batch, progress=ctx.progress
    )


async def cleanup(ctx: JobContext) -> dict[str, int]:
    now = ctx.now()
    batch = ctx.settings.cleanup.batch
    counts = await ctx.manager.delete_expired(now=now, batch=batch, progress=ctx.progress)
    # The files only those sessions' messages linked, now linked by none.
    attachments = await ctx.manager.delete_orphaned_attachments()
    await ctx.progress({"attachments": attachments})
    code = await ctx.manager.delete_unused_code_sessions(
        now=now, batch=batch, progress=ctx.progress
    )
    before = now - timedelta(seconds=ctx.settings.keep_runs_s)
    runs = 0
    for job in CORE_JOBS:
        while deleted := await ctx.manager.delete_job_runs(job.name, before=before, limit=batch):
            runs += deleted
            await ctx.progress({"job_runs": deleted})
            if deleted < batch:
                break
    return {**counts, "attachments": attachments, **code, "job_runs": runs}


async def upgrade_summaries(ctx: JobContext) -> dict[str, int]:
    return await ctx.manager.upgrade_fallback_summaries(
        batch=ctx.settings.upgrade_summaries.batch, progress=ctx.progress
    )


async def upkeep(ctx: JobContext) -> dict[str, int]:
    return await ctx.manager.upkeep(journal_size_limit=ctx.settings.upkeep.journal_size_limit)


async def prune(ctx: JobContext) -> dict[str, int]:
    """Every prunable is pruned, even when one fails; then the failures are raised."""
    targets: dict[str, Prunable] = {"spend_cache": ctx.manager, **ctx.prunables}
    failed: list[str] = []
    for name, target in targets.items():
        try:
            ctx.counts[name] += target.prune()
        except Exception as error:
            log.exception("pruning %s failed", name)
            failed.append(f"{name} ({type(error).__name__}: {error})")
        await asyncio.sleep(0)
    if failed:
        raise JobFailed("pruning failed for " + ", ".join(failed))
    return dict(ctx.counts)


CORE_JOBS: tuple[Job, ...] = (
    Job("finalize", "idle sessions get their closing summary", finalize),
    Job("expire", "sessions quiet past expire_after_s are expired", expire),
    Job("cleanup", "old sessions, files, Claude Code sessions and job runs deleted", cleanup),
    Job("upgrade_summaries", "fallback summaries rewritten by Claude", upgrade_summaries),
    Job("upkeep", "database statistics and WAL truncation", upkeep),
    Job("prune", "per-user state in this process forgets what has lapsed", prune),
)
