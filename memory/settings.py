"""Settings the memory layer takes: plain pydantic models, filled in by bots/config.py."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# The longest duration any setting takes. Unbounded, a huge value (1e21 seconds)
# passed the check and failed much later, deep inside, as an OverflowError of a
# timedelta or a date; inf and NaN likewise. Ten years is longer than any timeout,
# interval or retention a bot host needs.
MAX_DURATION_S = 10 * 365 * 86_400


def within_max_duration(value: object) -> object:
    """Refuse, before parsing, a number of seconds that is not finite or is longer
    than MAX_DURATION_S (in a string too, as the environment gives it); anything
    else is left to the field's own checks."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return value
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    except ValueError:
        return value
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ValueError(f"must be a finite number of seconds, at most 10 years ({MAX_DURATION_S})")
    return value


# Seconds with no bound of their own: finite, at most MAX_DURATION_S. Settings in
# every layer use these (memory is the layer all others may import).
Seconds = Annotated[float, BeforeValidator(within_max_duration)]
WholeSeconds = Annotated[int, BeforeValidator(within_max_duration)]


class DatabaseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = ""  # empty: a SQLite file in the data directory
    busy_timeout_ms: int = Field(5000, ge=0, le=600_000)
    sqlite_synchronous: str = Field("NORMAL", pattern="^(OFF|NORMAL|FULL|EXTRA)$")
    pool_size: int = Field(10, ge=1, le=200)
    connect_timeout_s: float = Field(5.0, gt=0, le=120)
    echo: bool = False


class MemorySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token_limit: int = Field(100_000, ge=1000, le=2_000_000)
    summarize_threshold: float = Field(0.7, gt=0.1, lt=1.0)
    min_messages_to_summarize: int = Field(10, ge=2)
    summarize_fraction: float = Field(0.7, gt=0.1, lt=1.0)
    summary_max_tokens: int = Field(500, ge=50)
    summary_share: float = Field(0.3, gt=0.05, lt=0.9)
    max_message_chars: int = Field(100_000, ge=1)
    max_message_tokens: int = Field(32_000, ge=10)
    cache_size: int = Field(1000, ge=0)
    cache_verify_after_s: Seconds = Field(2.0, ge=0)
    write_batch_size: int = Field(256, ge=1, le=5000)
    idle_after_s: WholeSeconds = Field(1800, ge=1)
    expire_after_s: WholeSeconds = Field(86_400, ge=1)
    retain_for_s: WholeSeconds = Field(30 * 86_400, ge=1)
    carry_closing_summary: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> MemorySettings:
        # Each message starts with the key it is about: bots/config.py names it.
        share = self.token_limit * self.summary_share
        if self.summary_max_tokens * 2 > share:
            raise ValueError(
                f"summary_max_tokens = {self.summary_max_tokens} must be at most half of "
                f"token_limit x summary_share = {self.token_limit} x {self.summary_share:g} "
                f"= {share:g}, so at most {math.floor(share / 2)}"
            )
        if self.expire_after_s <= self.idle_after_s:
            raise ValueError(
                f"expire_after_s = {self.expire_after_s} must be longer than "
                f"idle_after_s = {self.idle_after_s}"
            )
        return self
