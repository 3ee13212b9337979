"""Settings the memory layer takes: plain pydantic models, filled in by bots/config.py."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    cache_verify_after_s: float = Field(2.0, ge=0)
    write_batch_size: int = Field(256, ge=1, le=5000)
    idle_after_s: int = Field(1800, ge=1)
    expire_after_s: int = Field(86_400, ge=1)
    retain_for_s: int = Field(30 * 86_400, ge=1)
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
