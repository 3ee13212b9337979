"""The tables as Core sees them, and how their rows become the plain data of memory.types.

Every repository of the store reads rows through these mappers, so a column means
the same thing wherever it is read. Times are stored in UTC; SQLite hands them back
naive, so every mapper makes them aware again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, func

from memory.attachments import NewAttachment
from memory.context import TailMessage
from memory.models import (
    AttachmentBlobRow,
    ChatBindingRow,
    EventRow,
    JobRunRow,
    MessageAttachmentRow,
    MessageRow,
    ProjectRow,
    SessionRow,
    SummaryRow,
    TokenCalibrationRow,
)
from memory.types import (
    Delivery,
    Project,
    Role,
    SessionInfo,
    SessionStatus,
    StoredMessage,
    SummaryRecord,
    Usage,
)

projects: Table = ProjectRow.__table__  # type: ignore[assignment]
bindings: Table = ChatBindingRow.__table__  # type: ignore[assignment]
sessions: Table = SessionRow.__table__  # type: ignore[assignment]
messages: Table = MessageRow.__table__  # type: ignore[assignment]
summaries: Table = SummaryRow.__table__  # type: ignore[assignment]
events: Table = EventRow.__table__  # type: ignore[assignment]
job_runs: Table = JobRunRow.__table__  # type: ignore[assignment]
calibration: Table = TokenCalibrationRow.__table__  # type: ignore[assignment]
blobs: Table = AttachmentBlobRow.__table__  # type: ignore[assignment]
links: Table = MessageAttachmentRow.__table__  # type: ignore[assignment]

CONTINUABLE = (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.FINALIZED)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


@dataclass(slots=True)  # not frozen: built once per message on the hot path
class NewMessage:
    """A message on its way in: validated and counted by the manager."""

    session_id: int
    role: Role
    text: str
    token_count: int
    author_id: str | None = None
    author_name: str | None = None
    chat_ref: str | None = None
    platform_message_id: str | None = None
    metadata: dict[str, Any] | None = None
    usage: Usage | None = None
    billed_to: str | None = None
    delivery: Delivery | None = None
    settles: int | None = None  # a reply: the seq of the question it answers
    # Files stored with it (their blobs are kept already); linked in the same transaction.
    attachments: tuple[NewAttachment, ...] = ()


# A change of what a stored message is owed: (new delivery or None, the parts of it
# delivered or None, session id, seq).
Mark = tuple[str | None, int | None, int, int]


@dataclass(frozen=True, slots=True)
class SessionDelta:
    """How one write moved a session's version: the cache's coherence check."""

    session_id: int
    version_before: int
    version_after: int


@dataclass(slots=True)
class AppendOutcome:
    results: list[StoredMessage | BaseException]
    deltas: dict[int, SessionDelta] = field(default_factory=dict)


def tail_after(summarized_through: int, context_start: int) -> int:
    """The seq the unsummarized tail starts after: the last summarized message, or
    the last one before ``context_start``, whichever is later."""
    return max(summarized_through, context_start - 1)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the cache holds of a session: its row, active summaries, unsummarized tail."""

    session: SessionInfo
    summaries: list[SummaryRecord]
    tail: list[TailMessage]  # contiguous: seqs tail_first_seq, tail_first_seq + 1, ...
    tail_first_seq: int

    @classmethod
    def empty(cls, info: SessionInfo) -> Snapshot:
        """The snapshot of a session that has no messages yet: all of it is in ``info``."""
        return cls(info, [], [], tail_after(info.summarized_through, info.context_start) + 1)

    @property
    def tail_seqs(self) -> list[int]:
        return list(range(self.tail_first_seq, self.tail_first_seq + len(self.tail)))


def session_sums() -> tuple[Any, ...]:
    """Sessions, messages and usage summed over the selected sessions, in the order
    ``summed_usage`` reads them back: every total the operator sees adds up the same."""
    c = sessions.c
    return (
        func.count(c.id),
        func.coalesce(func.sum(c.message_count), 0),
        func.coalesce(func.sum(c.input_tokens), 0),
        func.coalesce(func.sum(c.output_tokens), 0),
        func.coalesce(func.sum(c.cache_read_tokens), 0),
        func.coalesce(func.sum(c.cache_write_tokens), 0),
        func.coalesce(func.sum(c.cost_usd), 0.0),
    )


def summed_usage(row: Sequence[Any], start: int = 0) -> tuple[int, int, Usage]:
    """(sessions, messages, usage) from ``session_sums``'s columns at ``start``."""
    r = row[start : start + 7]
    return int(r[0]), int(r[1]), Usage(int(r[2]), int(r[3]), int(r[4]), int(r[5]), float(r[6]))


def session_info(row: Mapping[Any, Any]) -> SessionInfo:
    return SessionInfo(
        id=row["id"],
        scope=row["scope"],
        chat_ref=row["chat_ref"],
        project_id=row["project_id"],
        interface=row["interface"],
        status=SessionStatus(row["status"]),
        created_at=as_utc(row["created_at"]),
        last_activity_at=as_utc(row["last_activity_at"]),
        ended_at=_opt_utc(row["ended_at"]),
        message_count=row["message_count"],
        last_seq=row["last_seq"],
        summarized_through=row["summarized_through"],
        context_start=row["context_start"],
        message_tokens=row["message_tokens"],
        unsummarized_tokens=row["unsummarized_tokens"],
        summary_tokens=row["summary_tokens"],
        tool_calls=row["tool_calls"],
        errors=row["errors"],
        usage=Usage(
            row["input_tokens"],
            row["output_tokens"],
            row["cache_read_tokens"],
            row["cache_write_tokens"],
            row["cost_usd"],
        ),
        state=dict(row["state"] or {}),
        carried_summary=row["carried_summary"],
        closing_summary=row["closing_summary"],
        version=row["version"],
    )


def stored_message(row: Mapping[Any, Any], *, duplicate: bool = False) -> StoredMessage:
    usage = None
    if row["input_tokens"] is not None or row["output_tokens"] is not None:
        usage = Usage(
            row["input_tokens"] or 0,
            row["output_tokens"] or 0,
            row["cache_read_tokens"] or 0,
            row["cache_write_tokens"] or 0,
            row["cost_usd"] or 0.0,
        )
    return StoredMessage(
        session_id=row["session_id"],
        seq=row["seq"],
        role=Role(row["role"]),
        text=row["text"],
        token_count=row["token_count"],
        author_id=row["author_id"],
        author_name=row["author_name"],
        platform_message_id=row["platform_message_id"],
        created_at=as_utc(row["created_at"]),
        metadata=dict(row["meta"] or {}),
        usage=usage,
        duplicate=duplicate,
        chat_ref=row["chat_ref"],
        delivery=Delivery(row["delivery"]) if row["delivery"] else None,
        delivered_parts=row.get("delivered_parts") or 0,
    )


def summary_record(row: Mapping[Any, Any]) -> SummaryRecord:
    return SummaryRecord(
        id=row["id"],
        session_id=row["session_id"],
        first_seq=row["first_seq"],
        last_seq=row["last_seq"],
        level=row["level"],
        text=row["text"],
        token_count=row["token_count"],
        summarizer=row["summarizer"],
        fallback=row["fallback"],
        created_at=as_utc(row["created_at"]),
    )


def project_of(row: Mapping[Any, Any]) -> Project:
    return Project(
        id=row["id"],
        name=row["name"],
        agent_kind=row["agent_kind"],
        model=row["model"],
        system_prompt=row["system_prompt"],
        token_limit=row["token_limit"],
        workdir=row["workdir"],
        settings=dict(row["settings"] or {}),
    )
