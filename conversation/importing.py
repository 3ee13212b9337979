"""Reading an export back in: a JSON export as conversation.export writes it
("palaver-export/1"), checked hard before anything is stored.

The document is parsed by pydantic in strict JSON mode: a number where text belongs,
text where a number belongs, an unknown field, a time without its zone, a negative
count, a field longer than memory would ever hold, seqs that repeat or leave gaps,
summaries that overlap or reach past the messages: each is refused with a message
that says where (``messages[12].seq: ...``), and nothing is stored. Token counts are
counted again here, never taken from the document (the context budget relies on
them). What passes becomes a ``memory.admin_types.SessionImport``, which memory
stores in one transaction.

An attachment that carries its bytes (an export with files: base64 ``data``) must be
valid base64 whose SHA-256 and length are the ones the document states, or the whole
import is refused; memory then keeps the bytes (once per content hash) and links the
file again. An attachment without data is linked only where this database already
has its bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from conversation.export import FORMAT_ID
from memory.admin_types import (
    ImportAttachment,
    ImportMessage,
    ImportSummary,
    SessionImport,
    fingerprint,
)
from memory.errors import PalaverError
from memory.tokens import TokenCounter
from memory.types import Role, SessionStatus, Usage

MAX_ID = 2**62
MAX_TOKENS = 2**40
MAX_COST = 1e9
MAX_TEXT = 1_000_000  # memory's own limit (memory.max_message_chars) is checked too
MAX_SUMMARIES = 10_000

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Id100 = Annotated[str, StringConstraints(max_length=100)]
Count = Annotated[int, Field(ge=0, le=MAX_TOKENS)]


class ImportRefused(PalaverError):
    """The document is not an export Palaver can import; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class UsageDoc(_Strict):
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_read_tokens: Count = 0
    cache_write_tokens: Count = 0
    cost_usd: Annotated[float, Field(ge=0, le=MAX_COST, allow_inf_nan=False)] = 0.0

    def usage(self) -> Usage:
        return Usage(
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cost_usd,
        )


class SessionDoc(_Strict):
    id: Annotated[int, Field(ge=1, le=MAX_ID)]
    chat: Annotated[str, StringConstraints(min_length=1, max_length=300)] | None
    scope: Literal["chat", "project"]
    project_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None
    interface: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,20}$")]
    status: SessionStatus
    created_at: AwareDatetime
    last_activity_at: AwareDatetime
    ended_at: AwareDatetime | None
    usage: UsageDoc
    carried_summary: Text | None
    closing_summary: Text | None


class SummaryDoc(_Strict):
    first_seq: Annotated[int, Field(ge=1, le=MAX_ID)]
    last_seq: Annotated[int, Field(ge=1, le=MAX_ID)]
    level: Annotated[int, Field(ge=1, le=100)]
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]
    summarizer: Annotated[str, StringConstraints(min_length=1, max_length=60)]
    fallback: bool
    created_at: AwareDatetime


class AttachmentDoc(_Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    kind: Literal["image", "pdf"]
    media_type: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0, le=MAX_TOKENS)]
    width: Annotated[int, Field(ge=0, le=1_000_000)] | None
    height: Annotated[int, Field(ge=0, le=1_000_000)] | None
    pages: Annotated[int, Field(ge=0, le=1_000_000)] | None
    tokens: Annotated[int, Field(ge=0, le=10_000_000)]
    data: str | None = None  # base64, in an export with files


class MessageDoc(_Strict):
    seq: Annotated[int, Field(ge=1, le=MAX_ID)]
    role: Role
    author_id: Id100 | None
    author_name: Annotated[str, StringConstraints(max_length=200)] | None
    text: Text
    created_at: AwareDatetime
    token_count: Count
    platform_message_id: Id100 | None
    metadata: dict[str, Any] | None
    usage: UsageDoc | None
    attachments: Annotated[list[AttachmentDoc], Field(max_length=100)] = []


class ExportDoc(_Strict):
    format: Literal["palaver-export/1"]
    session: SessionDoc
    summaries: Annotated[list[SummaryDoc], Field(max_length=MAX_SUMMARIES)]
    messages: list[MessageDoc]


def _refusal(error: ValidationError) -> ImportRefused:
    lines = []
    for item in error.errors(include_url=False)[:10]:
        where = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]
        ).lstrip(".")
        lines.append(f"{where or 'document'}: {item['msg']}")
    more = error.error_count() - len(lines)
    if more > 0:
        lines.append(f"... and {more} more")
    return ImportRefused("not a valid Palaver export: " + "; ".join(lines))


def parse_export(raw: bytes) -> ExportDoc:
    """The document, validated as a whole (see the module docstring)."""
    try:
        doc = ExportDoc.model_validate_json(raw)
    except ValidationError as error:
        if any(e["type"] == "json_invalid" for e in error.errors()):
            raise ImportRefused(
                "not a valid Palaver export: the body is not JSON (or nests too deeply)"
            ) from None
        raise _refusal(error) from None
    _check_consistency(doc)
    return doc


def _check_consistency(doc: ExportDoc) -> None:
    """What no field can say alone: seqs 1..n in order, summaries inside them."""
    if doc.format != FORMAT_ID:  # pragma: no cover - the Literal already says so
        raise ImportRefused(f"format must be {FORMAT_ID!r}")
    session = doc.session
    if session.scope == "chat" and session.chat is None:
        raise ImportRefused("session.chat: a chat's session must name its chat")
    if session.last_activity_at < session.created_at:
        raise ImportRefused("session.last_activity_at is before session.created_at")
    seen: set[int] = set()
    for index, message in enumerate(doc.messages):
        if message.seq in seen:
            raise ImportRefused(f"messages[{index}].seq: seq {message.seq} appears twice")
        seen.add(message.seq)
        if message.seq != index + 1:
            raise ImportRefused(
                f"messages[{index}].seq: expected seq {index + 1} (seqs run 1, 2, 3, ... "
                f"in order, without gaps), found {message.seq}"
            )
    last = len(doc.messages)
    ordered = sorted(doc.summaries, key=lambda s: s.first_seq)
    next_first = None
    for s in ordered:
        if s.last_seq < s.first_seq:
            raise ImportRefused(f"a summary covers {s.first_seq}-{s.last_seq}: an empty range")
        if s.last_seq > last:
            raise ImportRefused(
                f"a summary covers messages up to {s.last_seq}, but there are only {last}"
            )
        if next_first is not None and s.first_seq != next_first:
            raise ImportRefused(
                f"summaries must cover consecutive ranges: one starts at {s.first_seq} "
                f"where {next_first} was expected"
            )
        next_first = s.last_seq + 1


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def file_bytes(a: AttachmentDoc, where: str) -> bytes | None:
    """The bytes an attachment carries, checked against what the document says they
    are (``where`` names it in a refusal); None when it carries none."""
    if a.data is None:
        return None
    try:
        data = base64.b64decode(a.data, validate=True)
    except (binascii.Error, ValueError):
        raise ImportRefused(f"{where}.data: not valid base64") from None
    if not data:
        raise ImportRefused(f"{where}.data: an empty file")
    if hashlib.sha256(data).hexdigest() != a.sha256:
        raise ImportRefused(
            f"{where}.data: the bytes do not match sha256 {a.sha256} "
            "(the file was damaged or changed): nothing was imported"
        )
    if len(data) != a.bytes:
        raise ImportRefused(f"{where}.data: {len(data):,} bytes, but bytes says {a.bytes:,}")
    return data


def to_import(
    doc: ExportDoc, tokens: TokenCounter, on_progress: Callable[[int], None] | None = None
) -> SessionImport:
    """The validated document as memory stores it; tokens counted afresh (CPU-bound:
    call it in a worker thread)."""
    s = doc.session
    messages = []
    for index, m in enumerate(doc.messages, 1):
        messages.append(
            ImportMessage(
                seq=m.seq,
                role=m.role,
                text=m.text,
                token_count=tokens.count(m.text),
                author_id=m.author_id,
                author_name=m.author_name,
                created_at=_utc(m.created_at),
                platform_message_id=m.platform_message_id,
                metadata=m.metadata,
                usage=None if m.usage is None else m.usage.usage(),
                attachments=tuple(
                    ImportAttachment(
                        a.name,
                        a.kind,
                        a.media_type,
                        a.sha256,
                        a.bytes,
                        a.width,
                        a.height,
                        a.pages,
                        a.tokens,
                        file_bytes(a, f"messages[{index - 1}].attachments[{position}]"),
                    )
                    for position, a in enumerate(m.attachments)
                ),
            )
        )
        if on_progress is not None and index % 1000 == 0:
            on_progress(index)
    summaries = tuple(
        ImportSummary(
            first_seq=x.first_seq,
            last_seq=x.last_seq,
            level=x.level,
            text=x.text,
            token_count=tokens.count(x.text),
            summarizer=x.summarizer,
            fallback=x.fallback,
            created_at=_utc(x.created_at),
        )
        for x in doc.summaries
    )
    created = _utc(s.created_at)
    return SessionImport(
        origin=fingerprint(s.id, created, s.interface, s.chat, s.scope),
        id=s.id,
        scope=s.scope,
        chat_ref=s.chat,
        project_id=s.project_id,
        interface=s.interface,
        status=s.status,
        created_at=created,
        last_activity_at=_utc(s.last_activity_at),
        ended_at=None if s.ended_at is None else _utc(s.ended_at),
        usage=s.usage.usage(),
        carried_summary=s.carried_summary,
        closing_summary=s.closing_summary,
        messages=tuple(messages),
        summaries=summaries,
    )


async def read_export(
    raw: bytes, tokens: TokenCounter, on_progress: Callable[[int], None] | None = None
) -> SessionImport:
    """Parse, check and count ``raw`` off the event loop."""

    def work() -> SessionImport:
        return to_import(parse_export(raw), tokens, on_progress)

    return await asyncio.to_thread(work)
