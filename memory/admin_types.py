"""Plain data for the operator's reads and writes of memory: which sessions to list,
a session to restore from an export, usage per day and per interface.

The core fills these in (conversation.operations validates an export into a
``SessionImport``); memory stores and reads them, and knows nothing of HTTP or files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from memory.types import Role, SessionInfo, SessionStatus, Usage


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """Which sessions a listing shows; every field left empty matches everything."""

    interface: str | None = None
    chat_ref: str | None = None  # a chat's own sessions (project sessions have none)
    statuses: tuple[SessionStatus, ...] = ()
    project_id: int | None = None
    # Sessions this user wrote in: an author id, or "interface:id" for one interface.
    user: str | None = None
    active_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class SessionTotals:
    """What the sessions a filter matches add up to."""

    sessions: int
    messages: int
    usage: Usage


@dataclass(frozen=True, slots=True)
class ImportAttachment:
    """A file an exported message carried, by content hash. With ``data`` (an export
    with files; the core checked it against the hash) the bytes are kept here; without,
    the file is linked again only where this database still has it."""

    name: str
    kind: str
    media_type: str
    sha256: str
    size: int
    width: int | None
    height: int | None
    pages: int | None
    tokens: int
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class ImportMessage:
    seq: int
    role: Role
    text: str
    token_count: int  # counted here, at import, never taken from the document
    author_id: str | None
    author_name: str | None
    created_at: datetime
    platform_message_id: str | None
    metadata: dict[str, Any] | None
    usage: Usage | None
    attachments: tuple[ImportAttachment, ...] = ()


@dataclass(frozen=True, slots=True)
class ImportSummary:
    first_seq: int
    last_seq: int
    level: int
    text: str
    token_count: int
    summarizer: str
    fallback: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SessionImport:
    """A session as an export describes it, validated: stored whole or not at all."""

    origin: str  # the export's fingerprint: the same export is imported once
    id: int  # the id it had; kept where that id was never handed out here
    scope: str
    chat_ref: str | None
    project_id: int | None
    interface: str
    status: SessionStatus
    created_at: datetime
    last_activity_at: datetime
    ended_at: datetime | None
    usage: Usage
    carried_summary: str | None
    closing_summary: str | None
    messages: tuple[ImportMessage, ...] = field(default=())
    summaries: tuple[ImportSummary, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Restored:
    """What an import did: the session, whether it was written now (False: this
    export is here already), and files not linked again (the export carried no bytes
    for them, and they are not here)."""

    session: SessionInfo
    created: bool
    files_missing: int = 0


@dataclass(frozen=True, slots=True)
class InterfaceUsage:
    interface: str
    sessions: int
    messages: int
    usage: Usage


def fingerprint(
    session_id: int, created_at: datetime, interface: str, chat_ref: str | None, scope: str
) -> str:
    """What identifies an exported session wherever it is imported."""
    moment = created_at.astimezone(UTC).isoformat()
    canonical = json.dumps([session_id, moment, interface, chat_ref, scope], separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
