"""Job runs and job leases: what each scheduled job did, and who may run it now.

A run is a row in ``job_runs`` from start to finish (outcome, counts, error). A lease
is one row per job in ``job_leases``, taken by compare-and-set: an UPDATE that only
matches a lease that has run out, or an INSERT that does nothing when another
process inserted first. Both are single statements, so two processes racing for a
lease on SQLite (one writer at a time) or PostgreSQL (the row lock, then the WHERE
re-checked on the new row) cannot both win. The holder renews the lease while the
job runs and lets it run out at once when it is done; a crashed holder's lease runs
out by itself.

Times come from the caller's clock (the job runner's ``now``), so that the lease
and the runs agree with the lifecycle's notion of time, and tests can move it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from memory.database import translate_errors
from memory.models import JobLeaseRow
from memory.store.base import Repository
from memory.store.rows import as_utc, job_runs, utcnow

job_leases: Table = JobLeaseRow.__table__  # type: ignore[assignment]

RUNNING = "running"


@dataclass(frozen=True, slots=True)
class JobRun:
    """One recorded run of a job. ``outcome`` is running, ok, failed, cancelled or
    skipped; ``counts`` says what it did (also when it failed part-way)."""

    id: int
    job: str
    instance: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    counts: dict[str, int]
    error: str | None


@dataclass(frozen=True, slots=True)
class JobLease:
    job: str
    holder: str
    started_at: datetime
    expires_at: datetime
    finished_at: datetime | None


def _run(row: Mapping[Any, Any]) -> JobRun:
    ended = row["ended_at"]
    return JobRun(
        id=row["id"],
        job=row["job"],
        instance=row["instance"],
        started_at=as_utc(row["started_at"]),
        finished_at=None if ended is None else as_utc(ended),
        outcome=row["outcome"],
        counts=dict(row["counts"] or {}),
        error=row["error"],
    )


class JobRuns(Repository):
    """The job_runs and job_leases tables."""

    # -- runs -----------------------------------------------------------------------

    async def start(
        self, job: str, instance: str | None = None, *, now: datetime | None = None
    ) -> int:
        """Record that ``instance`` started ``job``; returns the run's id."""
        async with translate_errors(), self.db.writer.begin() as conn:
            return int(
                (
                    await conn.execute(
                        insert(job_runs)
                        .values(
                            job=job,
                            instance=instance,
                            started_at=now or utcnow(),
                            outcome=RUNNING,
                        )
                        .returning(job_runs.c.id)
                    )
                ).scalar_one()
            )

    async def finish(
        self,
        run_id: int,
        outcome: str,
        counts: Mapping[str, Any] | None,
        error: str | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        async with translate_errors(), self.db.writer.begin() as conn:
            await conn.execute(
                update(job_runs)
                .where(job_runs.c.id == run_id)
                .values(
                    ended_at=now or utcnow(),
                    outcome=outcome,
                    counts=None if counts is None else dict(counts),
                    error=error,
                )
            )

    async def record(
        self,
        job: str,
        instance: str | None,
        outcome: str,
        *,
        now: datetime,
        error: str | None = None,
    ) -> int:
        """A run that ended as it began (skipped): one row, started and finished."""
        async with translate_errors(), self.db.writer.begin() as conn:
            return int(
                (
                    await conn.execute(
                        insert(job_runs)
                        .values(
                            job=job,
                            instance=instance,
                            started_at=now,
                            ended_at=now,
                            outcome=outcome,
                            counts={},
                            error=error,
                        )
                        .returning(job_runs.c.id)
                    )
                ).scalar_one()
            )

    async def get(self, run_id: int) -> JobRun | None:
        async with translate_errors(), self.db.reader.connect() as conn:
            row = (
                (await conn.execute(select(job_runs).where(job_runs.c.id == run_id)))
                .mappings()
                .first()
            )
            return None if row is None else _run(row)

    async def latest(self, jobs: Sequence[str]) -> dict[str, JobRun]:
        """Each job's newest run (by any instance), for the jobs that ran at all."""
        if not jobs:
            return {}
        newest = (
            select(func.max(job_runs.c.id).label("id"))
            .where(job_runs.c.job.in_(list(jobs)))
            .group_by(job_runs.c.job)
            .subquery()
        )
        query = select(job_runs).join(newest, newest.c.id == job_runs.c.id)
        async with translate_errors(), self.db.reader.connect() as conn:
            return {r["job"]: _run(r) for r in (await conn.execute(query)).mappings()}

    async def history(self, job: str, *, limit: int = 20) -> list[JobRun]:
        """The job's newest runs, newest first."""
        query = (
            select(job_runs)
            .where(job_runs.c.job == job)
            .order_by(job_runs.c.started_at.desc(), job_runs.c.id.desc())
            .limit(limit)
        )
        async with translate_errors(), self.db.reader.connect() as conn:
            return [_run(r) for r in (await conn.execute(query)).mappings()]

    async def delete_before(self, job: str, before: datetime, *, limit: int) -> int:
        """Delete up to ``limit`` finished runs of ``job`` that started before ``before``
        (along the (job, started_at) index)."""
        doomed = (
            select(job_runs.c.id)
            .where(
                job_runs.c.job == job,
                job_runs.c.started_at < before,
                job_runs.c.outcome != RUNNING,
            )
            .limit(limit)
        )

        def transaction(conn: Connection) -> int:
            return int(
                conn.execute(
                    delete(job_runs).where(job_runs.c.id.in_(doomed.scalar_subquery()))
                ).rowcount
            )

        async with translate_errors():
            return await self.db.run_write(transaction)

    # -- leases ---------------------------------------------------------------------

    async def take_lease(
        self,
        job: str,
        holder: str,
        *,
        now: datetime,
        until: datetime,
        not_started_since: datetime | None = None,
    ) -> bool:
        """Take the job's lease until ``until`` if it is free (its holder's time has
        run out); with ``not_started_since``, not if a run that started since then
        has finished (a scheduled run that another instance has just done; a run
        whose holder crashed does not count). Returns whether it was taken.

        The runs a previous holder left ``running`` (it crashed, and its lease ran
        out) are closed as failed in the same transaction.
        """
        conditions = [job_leases.c.job == job, job_leases.c.expires_at <= now]
        if not_started_since is not None:
            conditions.append(
                or_(
                    job_leases.c.finished_at.is_(None),
                    job_leases.c.started_at < not_started_since,
                )
            )
        take = (
            update(job_leases)
            .where(*conditions)
            .values(holder=holder, started_at=now, expires_at=until, finished_at=None)
        )
        values = {"job": job, "holder": holder, "started_at": now, "expires_at": until}
        first = (
            sqlite_insert(job_leases).values(values).on_conflict_do_nothing()
            if self.db.is_sqlite
            else pg_insert(job_leases).values(values).on_conflict_do_nothing()
        )

        def transaction(conn: Connection) -> bool:
            if conn.execute(take).rowcount != 1 and conn.execute(first).rowcount != 1:
                return False
            conn.execute(
                update(job_runs)
                .where(
                    job_runs.c.job == job,
                    job_runs.c.outcome == RUNNING,
                    or_(job_runs.c.instance != holder, job_runs.c.instance.is_(None)),
                )
                .values(
                    outcome="failed",
                    ended_at=now,
                    error="its instance stopped before it finished (the lease ran out)",
                )
            )
            return True

        async with translate_errors():
            return await self.db.run_write(transaction)

    async def renew_lease(self, job: str, holder: str, *, until: datetime) -> bool:
        """Extend ``holder``'s lease; False if it is no longer theirs."""

        def transaction(conn: Connection) -> bool:
            done = conn.execute(
                update(job_leases)
                .where(job_leases.c.job == job, job_leases.c.holder == holder)
                .values(expires_at=until)
            )
            return done.rowcount == 1

        async with translate_errors():
            return await self.db.run_write(transaction)

    async def release_lease(self, job: str, holder: str, *, now: datetime) -> None:
        """``holder``'s run ended: the lease is free from now (the row stays, with
        when that run started and finished)."""

        def transaction(conn: Connection) -> None:
            conn.execute(
                update(job_leases)
                .where(job_leases.c.job == job, job_leases.c.holder == holder)
                .values(expires_at=now, finished_at=now)
            )

        async with translate_errors():
            await self.db.run_write(transaction)

    async def leases(self) -> dict[str, JobLease]:
        async with translate_errors(), self.db.reader.connect() as conn:
            rows = (await conn.execute(select(job_leases))).mappings()
            return {
                r["job"]: JobLease(
                    r["job"],
                    r["holder"],
                    as_utc(r["started_at"]),
                    as_utc(r["expires_at"]),
                    None if r["finished_at"] is None else as_utc(r["finished_at"]),
                )
                for r in rows
            }
