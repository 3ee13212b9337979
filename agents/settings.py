"""Settings of the Claude back end: plain pydantic models, filled in by bots/config.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# USD per million tokens: [input, output]. Cache reads and writes are priced as
# multiples of the input price (see ClaudeSettings).
DEFAULT_PRICES: dict[str, list[float]] = {
    "claude-opus-4-1": [15.0, 75.0],
    "claude-sonnet-4-6": [3.0, 15.0],
    "claude-haiku-4-5": [1.0, 5.0],
    "default": [3.0, 15.0],
}


class ClaudeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = ""  # empty: the SDK's default, or ANTHROPIC_BASE_URL
    timeout_s: float = Field(60.0, gt=0, le=600)
    max_retries: int = Field(3, ge=0, le=10)
    retry_base_delay_s: float = Field(0.5, ge=0, le=60)
    retry_max_wait_s: float = Field(30.0, ge=0, le=600)
    summarizer_model: str = Field("claude-haiku-4-5", min_length=1)
    summarizer_timeout_s: float = Field(30.0, gt=0, le=600)
    breaker_failures: int = Field(3, ge=1, le=100)
    breaker_reset_s: float = Field(300.0, ge=1)
    cache_write_multiplier: float = Field(1.25, ge=0)
    cache_read_multiplier: float = Field(0.1, ge=0)
    prices: dict[str, list[float]] = Field(default_factory=lambda: dict(DEFAULT_PRICES))

    @field_validator("prices")
    @classmethod
    def _pairs(cls, prices: dict[str, list[float]]) -> dict[str, list[float]]:
        for model, pair in prices.items():
            if len(pair) != 2 or min(pair) < 0:
                raise ValueError(
                    f"prices.{model} must be [input, output] USD per million tokens, "
                    f"both >= 0; got {pair}"
                )
        if "default" not in prices:
            raise ValueError('prices needs a "default" entry for models not listed')
        return prices


class SpendSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_daily_usd: float = Field(5.0, ge=0)  # 0: no cap
    session_usd: float = Field(2.0, ge=0)  # 0: no cap
