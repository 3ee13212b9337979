"""The ``[jobs]`` settings: each job's schedule (an interval or a cron expression),
whether it runs, and its batch size; and how the jobs share one database.

Every schedule is checked when the configuration is loaded, with APScheduler's own
parser, so a bad one stops the process at start naming the key and the value,
never at 4 a.m. when the job would first have run. A job's default schedule is an
interval or a cron expression; setting the other in config.toml replaces it
(``[jobs.upkeep] every = 3600`` drops the default cron), setting both is an error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from memory.settings import WholeSeconds

Seconds = Annotated[int, Field(ge=1, le=366 * 86_400)]

_CRON_HELP = (
    'a cron expression of 5 fields, "minute hour day month day-of-week", '
    'e.g. "17 4 * * *" (04:17 daily) or "*/10 * * * mon-fri"'
)


def check_cron(expression: str) -> str:
    """The expression, if APScheduler reads it as standard cron means it and it fires."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"needs {_CRON_HELP}; got {len(fields)} field(s)")
    if re.search(r"\d", fields[4]):
        # APScheduler 3 counts weekdays from Monday = 0, cron from Sunday = 0: a
        # number would silently run on the wrong day.
        raise ValueError(
            "day-of-week must be * or names (mon, tue, ... sun; ranges like mon-fri, "
            "lists like sat,sun): weekday numbers mean different days in cron and APScheduler"
        )
    try:
        trigger = CronTrigger.from_crontab(expression, timezone=UTC)
    except ValueError as error:
        raise ValueError(f"needs {_CRON_HELP}: {error}") from None
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
        raise ValueError("never fires (no such date); needs " + _CRON_HELP)
    return " ".join(fields)


class JobSettings(BaseModel):
    """One job: on or off, and when: ``every`` N seconds or on a ``cron`` schedule."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    every: Seconds | None = None
    cron: str | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @model_validator(mode="after")
    def _one_schedule(self) -> JobSettings:
        if self.every is not None and self.cron is not None:
            given = self.model_fields_set
            if "every" in given and "cron" in given:
                raise ValueError(
                    f"every = {self.every} and cron = {self.cron!r} are both set; "
                    "give one: an interval in seconds or a cron expression"
                )
            # One of them is this job's default: the one in config.toml replaces it.
            if "every" in given:
                self.cron = None
            else:
                self.every = None
        if self.every is None and self.cron is None:
            raise ValueError("needs a schedule: every = <seconds> or cron = <expression>")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_schedule(self, handler: SerializerFunctionWrapHandler) -> Any:
        # TOML has no null: the schedule that is not used is left out (check-config).
        dumped = handler(self)
        return {k: v for k, v in dumped.items() if v is not None}

    def trigger(self, timezone: tzinfo) -> BaseTrigger:
        if self.cron is not None:
            return CronTrigger.from_crontab(self.cron, timezone=timezone)
        assert self.every is not None
        return IntervalTrigger(seconds=self.every, timezone=timezone)

    def describe(self, timezone: tzinfo) -> str:
        """The schedule in words, for /jobs and ``jobs list``."""
        if self.cron is not None:
            return f"cron {self.cron} ({timezone})"
        every = self.every or 0
        for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
            if every >= size and every % size == 0:
                return f"every {every // size} {unit}"
        return f"every {every} s"

    def period(self, timezone: tzinfo, now: datetime) -> timedelta:
        """The time between two runs (for cron, the next two after ``now``)."""
        if self.every is not None:
            return timedelta(seconds=self.every)
        trigger = self.trigger(timezone)
        first = trigger.get_next_fire_time(None, now)
        second = None if first is None else trigger.get_next_fire_time(first, first)
        if first is None or second is None:
            return timedelta(days=1)
        gap: timedelta = second - first
        return gap


class BatchedJobSettings(JobSettings):
    """A job that works through rows in batches, one short transaction each."""

    batch: int = Field(100, ge=1, le=100_000)


class FinalizeJob(BatchedJobSettings):
    every: Seconds | None = 60
    batch: int = Field(100, ge=1, le=100_000)  # sessions per batch


class ExpireJob(BatchedJobSettings):
    every: Seconds | None = 300
    batch: int = Field(200, ge=1, le=100_000)  # sessions per batch


class CleanupJob(BatchedJobSettings):
    every: Seconds | None = 3600
    batch: int = Field(500, ge=1, le=100_000)  # rows per transaction


class UpgradeSummariesJob(BatchedJobSettings):
    every: Seconds | None = 600
    batch: int = Field(20, ge=1, le=10_000)  # sessions per batch


class UpkeepJob(JobSettings):
    cron: str | None = "17 4 * * *"
    # SQLite: a WAL larger than this is cut back to it when it is next reset.
    journal_size_limit: int = Field(64 * 1024 * 1024, ge=0)


class PruneJob(JobSettings):
    every: Seconds | None = 600


class JobsSettings(BaseModel):
    """The ``[jobs]`` section."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    instance: str = Field("", max_length=120)
    timezone: str = "UTC"
    lease_s: int = Field(120, ge=5, le=86_400)
    keep_runs_s: WholeSeconds = Field(30 * 86_400, ge=3600)
    pause_ratio: float = Field(2.0, ge=0, le=100)
    finalize: FinalizeJob = Field(default_factory=FinalizeJob)
    expire: ExpireJob = Field(default_factory=ExpireJob)
    cleanup: CleanupJob = Field(default_factory=CleanupJob)
    upgrade_summaries: UpgradeSummariesJob = Field(default_factory=UpgradeSummariesJob)
    upkeep: UpkeepJob = Field(default_factory=UpkeepJob)
    prune: PruneJob = Field(default_factory=PruneJob)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value.upper() == "UTC":
            return "UTC"
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                'needs an IANA time zone name such as "UTC" or "Europe/Berlin"'
            ) from None
        return value

    @property
    def tz(self) -> tzinfo:
        return UTC if self.timezone == "UTC" else ZoneInfo(self.timezone)

    def of(self, job: str) -> JobSettings:
        settings = getattr(self, job)
        assert isinstance(settings, JobSettings), job
        return settings
