"""Settings the conversation core takes: plain pydantic models, filled in by bots/config.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSettings(_Section):
    system_prompt: str = Field(
        "You are Palaver, a helpful assistant in a chat. Answer clearly and concisely.",
        min_length=1,
        max_length=20_000,
    )
    model: str = Field("claude-sonnet-4-6", min_length=1)
    max_tokens: int = Field(1024, ge=1, le=64_000)
    context_window: int = Field(200_000, ge=1000)


class AccessSettings(_Section):
    allowed_users: list[str] = Field(default_factory=list)
    allowed_chats: list[str] = Field(default_factory=list)
    allowed_guilds: list[str] = Field(default_factory=list)
    allowed_roles: list[str] = Field(default_factory=list)
    admins: list[str] = Field(default_factory=list)
    allow_everyone: bool = False


class RateLimitSettings(_Section):
    per_minute: float = Field(20.0, gt=0)
    burst: int = Field(5, ge=1)


TEXT_EXTENSIONS = [
    *("txt", "md", "markdown", "rst", "log", "csv", "tsv", "json", "jsonl", "yaml", "yml"),
    *("toml", "ini", "cfg", "conf", "xml", "html", "css", "py", "js", "ts", "tsx", "jsx"),
    *("java", "kt", "c", "h", "cpp", "hpp", "cs", "go", "rs", "rb", "php", "sh", "sql"),
    *("swift", "r", "tex", "diff", "patch"),
]


class AttachmentSettings(_Section):
    """Files sent to the bot, on every interface."""

    text_extensions: list[str] = Field(default_factory=lambda: list(TEXT_EXTENSIONS))
    max_text_bytes: int = Field(50_000, ge=0, le=20_000_000)
