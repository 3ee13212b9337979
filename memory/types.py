"""Plain data that crosses the memory layer's boundary.

memory/ knows nothing of chats or models beyond these values: interfaces and agents
hand them in and get them back, and never see SQLAlchemy rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class Delivery(StrEnum):
    """What a stored message is still owed (None: nothing)."""

    AWAITING = "awaiting"  # a question the bot was asked, not answered yet
    PENDING = "pending"  # a reply stored, not delivered yet
    FAILED = "failed"  # a reply the chat could not take


class SessionStatus(StrEnum):
    ACTIVE = "active"
    IDLE = "idle"
    FINALIZED = "finalized"
    EXPIRED = "expired"
    ENDED = "ended"  # closed by /reset: kept for export, never continued


@dataclass(frozen=True, slots=True)
class ChatKey:
    """Where a conversation happens: (interface, chat id, thread id or none)."""

    interface: str
    chat_id: str
    thread_id: str | None = None

    @property
    def ref(self) -> str:
        """A compact string form; also the scope of platform message ids."""
        return f"{self.interface}:{self.chat_id}:{self.thread_id or ''}"

    @classmethod
    def from_ref(cls, ref: str) -> ChatKey:
        """The key whose ``ref`` is ``ref``."""
        interface, _, rest = ref.partition(":")
        chat_id, _, thread_id = rest.rpartition(":")
        return cls(interface, chat_id, thread_id or None)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as the model API reports it for one call; the truth for spend."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    name: str
    agent_kind: str
    model: str | None
    system_prompt: str | None
    token_limit: int | None
    workdir: str | None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A snapshot of a session's row."""

    id: int
    scope: str  # "chat" or "project"
    chat_ref: str | None
    project_id: int | None
    interface: str
    status: SessionStatus
    created_at: datetime
    last_activity_at: datetime
    ended_at: datetime | None
    message_count: int
    last_seq: int
    summarized_through: int
    context_start: int
    message_tokens: int
    unsummarized_tokens: int
    summary_tokens: int
    tool_calls: int
    errors: int
    usage: Usage
    state: dict[str, Any]
    carried_summary: str | None
    closing_summary: str | None
    version: int


@dataclass(slots=True)  # not frozen: built once per message on the hot path
class StoredMessage:
    session_id: int
    seq: int
    role: Role
    text: str
    token_count: int
    author_id: str | None
    author_name: str | None
    platform_message_id: str | None
    created_at: datetime
    metadata: dict[str, Any]
    usage: Usage | None = None
    duplicate: bool = False  # True when the platform id had been stored before
    chat_ref: str | None = None  # the chat it came from, or that a reply goes to
    delivery: Delivery | None = None
    delivered_parts: int = 0  # of a reply still owed: the parts its chat already has


@dataclass(frozen=True, slots=True)
class SummaryRecord:
    id: int
    session_id: int
    first_seq: int
    last_seq: int
    level: int
    text: str
    token_count: int
    summarizer: str
    fallback: bool
    created_at: datetime


class ContextMessage(NamedTuple):
    """One API turn (several stored messages of the same role, merged).

    ``media`` are the files (images, PDFs) its messages carried that go with it, as
    memory.context's MediaRef tuples: (sha256, media type, tokens, bytes, pages).
    """

    role: Role
    text: str
    author_name: str | None = None
    media: tuple[tuple[str, str, int, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Context:
    """What a model call needs: within budget, valid for the Messages API.

    ``system`` and ``summaries`` are the stable prefix (cacheable); ``messages``
    alternate user/assistant and start with the user.
    """

    session_id: int
    system: str
    summaries: tuple[str, ...]
    messages: tuple[ContextMessage, ...]
    estimated_tokens: int
    budget: int
    dropped_messages: int  # unsummarized messages left out to stay within budget
    dropped_summaries: int = 0  # oldest summaries left out when the budget is tiny
    raw_tokens: int = 0  # the estimate before calibration: what calibration compares
    media_left_out: int = 0  # files of the newest message that did not fit: sent as text
    files: int = 0  # how many files (images, PDFs) the messages carry

    @property
    def media(self) -> tuple[tuple[str, str, int, int, int], ...]:
        """Every file the context sends, oldest first."""
        return tuple(ref for message in self.messages for ref in message.media)


@dataclass(frozen=True, slots=True)
class SessionStats:
    session_id: int
    status: SessionStatus
    message_count: int
    summaries: int
    summarized_through: int
    context_tokens: int
    token_limit: int
    budget_used: float
    tool_calls: int
    errors: int
    usage: Usage


@dataclass(frozen=True, slots=True)
class GlobalStats:
    sessions_total: int
    sessions_active: int
    messages: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    by_interface: dict[str, int]
    average_session_messages: float
    cache_hits: int
    cache_misses: int

    @property
    def cache_hit_rate(self) -> float:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0

    @property
    def prompt_cache_read_share(self) -> float:
        """Share of input tokens the model API served from its prompt cache."""
        total = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
        return self.cache_read_tokens / total if total else 0.0
