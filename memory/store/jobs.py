"""Job runs: every scheduled job's run, recorded with its outcome and counts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, update

from memory.database import translate_errors
from memory.store.base import Repository
from memory.store.rows import job_runs, utcnow


class JobRuns(Repository):
    """The job_runs table."""

    async def start(self, job: str) -> int:
        async with translate_errors(), self.db.writer.begin() as conn:
            return int(
                (
                    await conn.execute(
                        insert(job_runs)
                        .values(job=job, started_at=utcnow(), outcome="running")
                        .returning(job_runs.c.id)
                    )
                ).scalar_one()
            )

    async def finish(
        self, run_id: int, outcome: str, counts: dict[str, Any] | None, error: str | None = None
    ) -> None:
        async with translate_errors(), self.db.writer.begin() as conn:
            await conn.execute(
                update(job_runs)
                .where(job_runs.c.id == run_id)
                .values(ended_at=utcnow(), outcome=outcome, counts=counts, error=error)
            )
