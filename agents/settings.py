"""Settings of the Claude back end: plain pydantic models, filled in by bots/config.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memory.settings import Seconds

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
    breaker_reset_s: Seconds = Field(300.0, ge=1)
    cache_write_multiplier: float = Field(1.25, ge=0)
    cache_read_multiplier: float = Field(0.1, ge=0)
    prices: dict[str, list[float]] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    # Models that cannot read images or PDFs: their files stay in memory, unsent.
    text_only_models: list[str] = Field(default_factory=list)

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


class ClaudeCodeSettings(BaseModel):
    """The Claude Code agent (agents/claude_code.py): its live CLI processes and where
    the CLI keeps its own state."""

    model_config = ConfigDict(extra="forbid")

    max_live: int = Field(4, ge=1, le=200)  # live CLI processes at most, one per project
    idle_s: Seconds = Field(600.0, gt=0)  # a live CLI idle this long is closed
    approval_timeout_s: Seconds = Field(300.0, gt=0)  # no answer to Approve/Deny: denied
    cli_path: str = ""  # empty: the CLI bundled in claude-agent-sdk
    config_dir: str = ""  # the CLI's CLAUDE_CONFIG_DIR; empty: <data_dir>/claude
    # Environment variables (beyond the agent's own short list) that reach the CLI and
    # the commands it runs, e.g. ["JAVA_HOME", "GOPATH"]. Every other variable of
    # Palaver's environment is blanked for the CLI, so that no secret reaches it.
    pass_env: list[str] = Field(default_factory=list)
    # Which settings files of a project the CLI reads: "project" loads its CLAUDE.md
    # and .claude/settings.json (whose hooks run commands); [] reads none.
    setting_sources: list[str] = Field(default_factory=lambda: ["project"])
    # A budgeted project's CLI is replaced (resumed from the transcript) once it has
    # spent this many per-turn budgets: the CLI's own --max-budget-usd counts from its
    # start, so it is set to budget x this, and each turn is capped by Palaver itself.
    budget_turns_per_process: int = Field(10, ge=1, le=1000)

    @field_validator("setting_sources")
    @classmethod
    def _sources(cls, sources: list[str]) -> list[str]:
        unknown = sorted(set(sources) - {"user", "project", "local"})
        if unknown:
            raise ValueError(f"setting_sources: unknown {unknown}; allowed: user, project, local")
        return sources


class ProjectsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Project working directories must resolve inside this directory (relative to the
    # configuration file, like data_dir); symlinks and ".." that leave it are refused.
    root: str = "projects"
