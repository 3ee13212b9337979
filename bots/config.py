"""Configuration: config.toml, overridden from the environment, validated at start.

Naming scheme for overrides: ``PALAVER_<SECTION>__<KEY>``, e.g.
``PALAVER_MEMORY__TOKEN_LIMIT=50000`` or ``PALAVER_DATABASE__URL=postgresql+asyncpg://...``;
a nested section takes one ``__`` per level: ``PALAVER_JOBS__CLEANUP__CRON="0 * * * *"``.
A value is read as a TOML literal when it parses as one (numbers, booleans, lists
such as ``[1, 2]``), otherwise as a plain string. Secrets come only from the
environment (TELEGRAM_BOT_TOKEN, DISCORD_BOT_TOKEN, ANTHROPIC_API_KEY) and are never
printed: ``check-config`` masks them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from agents.settings import ClaudeCodeSettings, ClaudeSettings, ProjectsSettings, SpendSettings
from bots.http_settings import HttpSettings
from conversation.job_settings import JobsSettings
from conversation.settings import (
    AccessSettings,
    AgentSettings,
    AttachmentSettings,
    RateLimitSettings,
)
from memory.settings import DatabaseSettings, MemorySettings

ENV_PREFIX = "PALAVER_"
SECRET_ENV = ("TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN", "ANTHROPIC_API_KEY", "PALAVER_ADMIN_TOKEN")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


class ConfigError(Exception):
    """The configuration is invalid: one line per bad value, each naming the key, the
    value and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PalaverSettings(_Section):
    data_dir: Path = Path("data")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    shutdown_grace_s: float = Field(10.0, ge=0, le=600)
    max_concurrent_turns: int = Field(1024, ge=1, le=100_000)


class TelegramSettings(_Section):
    """The Telegram interface; the token comes from TELEGRAM_BOT_TOKEN."""

    base_url: str = Field("https://api.telegram.org/bot", min_length=1)
    base_file_url: str = Field("https://api.telegram.org/file/bot", min_length=1)
    group_mode: Literal["mention", "all"] = "mention"
    stream_replies: bool = True
    use_drafts: bool = True
    draft_interval_s: float = Field(0.5, ge=0.05, le=30)
    edit_interval_s: float = Field(2.0, ge=0.2, le=60)
    typing_interval_s: float = Field(4.0, ge=0.5, le=5)
    http_client: Literal["aiohttp", "httpx"] = "aiohttp"
    connection_pool_size: int = Field(256, ge=1, le=10_000)
    http_version: Literal["1.1", "2"] = "1.1"
    poll_timeout_s: int = Field(30, ge=0, le=50)
    flood_max_retries: int = Field(3, ge=0, le=10)
    flood_max_wait_s: float = Field(60.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _http2_needs_httpx(self) -> TelegramSettings:
        if self.http_version == "2" and self.http_client != "httpx":
            raise ValueError(
                'http_version = "2" needs http_client = "httpx" (the aiohttp transport '
                "speaks HTTP/1.1 only)"
            )
        return self


class DiscordSettings(_Section):
    """The Discord interface; the token comes from DISCORD_BOT_TOKEN."""

    guild_mode: Literal["mention", "all"] = "mention"
    message_content: bool = True
    command_guilds: list[int] = Field(default_factory=list)
    stream_edit_interval_s: float = Field(1.0, ge=0.2, le=60)
    connect_timeout_s: float = Field(30.0, gt=0, le=600)


class Secrets(BaseModel):
    telegram_bot_token: SecretStr | None = None
    discord_bot_token: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    palaver_admin_token: SecretStr | None = None


class Config(_Section):
    palaver: PalaverSettings = Field(default_factory=PalaverSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    claude: ClaudeSettings = Field(default_factory=ClaudeSettings)
    claude_code: ClaudeCodeSettings = Field(default_factory=ClaudeCodeSettings)
    projects: ProjectsSettings = Field(default_factory=ProjectsSettings)
    spend: SpendSettings = Field(default_factory=SpendSettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    attachments: AttachmentSettings = Field(default_factory=AttachmentSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    secrets: Secrets = Field(default_factory=Secrets, exclude=True)
    source: Path | None = Field(None, exclude=True)
    # Keys that still work but have moved: said once at start, in the log.
    notes: list[str] = Field(default_factory=list, exclude=True)

    @property
    def projects_root(self) -> Path:
        return Path(self.projects.root).expanduser()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.palaver.data_dir / 'palaver.db'}"


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        *sections, key = name[len(ENV_PREFIX) :].lower().split("__")
        if sections[0] == "secrets":
            continue
        target = data
        for depth in range(len(sections)):
            target = target.setdefault(sections[depth], {})
            if not isinstance(target, dict):
                raise ConfigError(f"{name}: [{'.'.join(sections[: depth + 1])}] is not a section")
        target[key] = _env_value(raw)


_LEADING_KEY = re.compile(r"[a-z_]+ = ")
_DATABASES = (
    "use sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user@host/database "
    "(empty: a SQLite file in palaver.data_dir)"
)


def _problem(key: str, value: Any, allowed: str) -> str:
    return f"invalid configuration: {key} = {value!r}: {allowed}"


def _format(error: ValidationError) -> list[str]:
    """One line per error. A check across a section's keys names its first key in
    its message ("summary_max_tokens = 500 must be ..."): that key gets the
    section's name in front, as any other key would."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(config)"
        message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        if isinstance(value, dict) and _LEADING_KEY.match(message):
            lines.append(f"invalid configuration: {key}.{message}")
        elif isinstance(value, dict):
            lines.append(f"invalid configuration: {key}: {message}")
        else:
            lines.append(_problem(key, value, message))
    return lines


def _masked_url(url: str) -> str:
    """A database URL fit to show: its password starred, parsable or not."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _http_url_problem(key: str, url: str, allowed: str) -> Iterator[str]:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        yield _problem(key, url, f"not an http:// or https:// URL; {allowed}")


def _directory_problem(path: Path, creatable: bool) -> str | None:
    """Why ``path`` cannot be (or, if ``creatable``, become) a directory, or None."""
    if path.exists():
        return None if path.is_dir() else f"{path} is not a directory"
    if not creatable:
        return f"the directory {path} does not exist; create it first"
    if not path.parent.is_dir():
        return (
            f"its parent directory {path.parent} does not exist; create it first "
            "(Palaver creates only the data directory itself)"
        )
    return None


def _check(config: Config) -> list[str]:
    """What the models cannot see: URLs that must parse, directories on this machine.

    Only the data directory is ever created (0700, at start); a SQLite file
    elsewhere needs an existing directory, so a mistyped path is refused here
    instead of being built somewhere on the disk."""
    problems: list[str] = []
    data_dir = config.palaver.data_dir
    why = _directory_problem(data_dir, creatable=True)
    if why:
        problems.append(_problem("palaver.data_dir", str(data_dir), why))
    url = config.database.url
    if url:
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            parsed = None
        if parsed is None:
            problems.append(
                _problem("database.url", _masked_url(url), f"not a database URL; {_DATABASES}")
            )
        elif parsed.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            why = f"{parsed.drivername} is not supported; {_DATABASES}"
            problems.append(_problem("database.url", _masked_url(url), why))
        elif parsed.drivername == "sqlite+aiosqlite":
            name = parsed.database or ""
            if name and name != ":memory:" and not name.startswith("file:"):
                folder = Path(name).absolute().parent
                why = None
                if folder != data_dir.absolute():  # the data directory is checked above
                    why = _directory_problem(folder, creatable=False)
                if why:
                    problems.append(_problem("database.url", url, why))
    if config.claude.base_url:
        problems += _http_url_problem(
            "claude.base_url",
            config.claude.base_url,
            "leave it empty for Anthropic's API, or give a gateway's, e.g. https://gateway.example",
        )
    for key in ("base_url", "base_file_url"):
        problems += _http_url_problem(
            f"telegram.{key}",
            getattr(config.telegram, key),
            "a Bot API server's, e.g. https://api.telegram.org/bot",
        )
    return problems


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override and validate; raise ConfigError before anything is touched."""
    environ = os.environ if environ is None else environ
    path = path or DEFAULT_CONFIG
    data: dict[str, Any] = {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if path != DEFAULT_CONFIG:  # without --config and config.toml: the defaults
            raise ConfigError(
                _problem("--config", str(path), "no such configuration file")
            ) from None
    except IsADirectoryError:
        raise ConfigError(
            _problem("--config", str(path), "a directory; give the configuration file in it")
        ) from None
    except OSError as error:  # unreadable: permissions, a broken disk
        raise ConfigError(
            _problem("--config", str(path), f"cannot be read: {error.strerror or error}")
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    for forbidden in ("secrets", *[s.lower() for s in SECRET_ENV]):
        if forbidden in data or any(isinstance(v, dict) and forbidden in v for v in data.values()):
            raise ConfigError(
                f"{path}: {forbidden!r} must not be in the file; secrets come only from "
                f"the environment ({', '.join(SECRET_ENV)})"
            )
    _apply_env(data, environ)
    notes = _moved_keys(data)
    data["secrets"] = {
        name.lower(): environ[name] for name in SECRET_ENV if environ.get(name, "").strip()
    }
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError("\n".join(_format(error))) from None
    base = path.resolve().parent
    if not config.palaver.data_dir.is_absolute():
        config.palaver.data_dir = base / config.palaver.data_dir
    if not Path(config.projects.root).expanduser().is_absolute():
        config.projects.root = str(base / config.projects.root)
    config.source = path
    config.notes = notes
    problems = _check(config)
    if problems:
        raise ConfigError("\n".join(problems))
    return config


# Keys that moved: (old section, old key) -> (new section, new key).
MOVED = {
    ("telegram", "text_extensions"): ("attachments", "text_extensions"),
    ("telegram", "max_document_bytes"): ("attachments", "max_text_bytes"),
    ("discord", "max_attachment_bytes"): ("attachments", "max_text_bytes"),
    ("telegram", "concurrent_updates"): ("palaver", "max_concurrent_turns"),
}


def _moved_keys(data: dict[str, Any]) -> list[str]:
    """Accept the old name of a moved key (the new name wins if both are set)."""
    notes = []
    for (section, key), (new_section, new_key) in MOVED.items():
        old = data.get(section)
        if not isinstance(old, dict) or key not in old:
            continue
        value = old.pop(key)
        target = data.setdefault(new_section, {})
        if isinstance(target, dict):
            target.setdefault(new_key, value)
        notes.append(
            f"{section}.{key} has moved to {new_section}.{new_key}; "
            "the old name still works for now"
        )
    return notes


def render_config(config: Config) -> str:
    """The effective configuration as TOML, secrets masked."""
    lines = [f"# effective configuration (file: {config.source})"]
    dumped = config.model_dump(mode="json")
    for section, values in dumped.items():
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            if section == "database" and key == "url" and value:
                value = make_url(value).render_as_string(hide_password=True)
            lines.append(f"{key} = {_toml(value)}")
    lines.append("\n# secrets (from the environment only)")
    for name in SECRET_ENV:
        secret = getattr(config.secrets, name.lower())
        lines.append(f"# {name} = {'****** (set)' if secret else '(not set)'}")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)
