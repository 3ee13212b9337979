"""/jobs: the scheduled jobs from a chat, for the bot's admins.

``/jobs`` lists every job with its schedule, its last run (by any instance) and its
next; ``/jobs run NAME`` runs one now and says what it did. The same runner as the
timetable, the HTTP API and ``run.py jobs``, so a run by hand takes the job's lease
and is recorded like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from conversation.jobs import JobRun, JobStatus
from conversation.registry import Argument, Command, CommandCall, Registry, Reply, Subcommand

USAGE = "Send /jobs to list the jobs, /jobs run NAME to run one now."


class JobControl(Protocol):
    """What /jobs uses of the scheduler."""

    async def list_jobs(self) -> Sequence[JobStatus]: ...

    async def run_now(self, name: str) -> JobRun: ...


def when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def describe_counts(counts: dict[str, int]) -> str:
    done = ", ".join(f"{name.replace('_', ' ')} {n:,}" for name, n in counts.items() if n)
    return done or "nothing to do"


def describe_run(run: JobRun) -> str:
    """A run in one line: its outcome, when, how long, what it did, and why it failed."""
    took = ""
    if run.finished_at is not None:
        took = f" in {(run.finished_at - run.started_at).total_seconds():.1f} s"
    line = f"{run.outcome} at {when(run.started_at)}{took}: {describe_counts(run.counts)}"
    if run.error:
        line += f" ({run.error})"
    return line


def describe_status(status: JobStatus) -> str:
    state = status.schedule if status.enabled else "off"
    lines = [f"{status.name} ({state}): {status.about}"]
    last = "never run" if status.last_run is None else describe_run(status.last_run)
    lines.append(f"  last: {last}")
    if status.running_on is not None:
        lines.append(f"  running now on {status.running_on}")
    elif status.enabled:
        lines.append(f"  next: {when(status.next_run) if status.next_run else 'soon'}")
    return "\n".join(lines)


class JobCommands:
    def __init__(self, registry: Registry, jobs: JobControl) -> None:
        self.registry = registry
        self.jobs = jobs

    async def _names(self) -> list[str]:
        return [status.name for status in await self.jobs.list_jobs()]

    async def complete(self, call: CommandCall, typed: str) -> list[str]:
        typed = typed.lower()
        return [name for name in await self._names() if name.startswith(typed)]

    def register(self) -> None:
        self.registry.add(
            Command(
                "jobs",
                "The scheduled jobs: last and next runs; run one now (admins)",
                self.run,
                subcommands=(
                    Subcommand("list", "Every job, its last run and its next"),
                    Subcommand(
                        "run",
                        "Run a job now",
                        (Argument("name", "The job", required=True, complete=self.complete),),
                    ),
                ),
                private=True,
                admin_only=True,
            )
        )

    async def run(self, call: CommandCall) -> Reply:
        sub, _, rest = call.argument.strip().partition(" ")
        sub = sub.lower()
        if sub in ("", "list"):
            statuses = await self.jobs.list_jobs()
            return Reply("\n".join(describe_status(status) for status in statuses))
        if sub == "run" and rest.strip():
            name = rest.strip()
            run = await self.jobs.run_now(name)
            return Reply(f"{run.job}: {describe_run(run)}")
        return Reply(f"Unknown /jobs {call.argument.strip()}. {USAGE}")
