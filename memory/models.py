"""The schema: SQLAlchemy 2 typed models.

The store issues Core statements against these tables; the ORM classes exist for
typing and for Alembic. Every lookup the manager makes has an index here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite wants INTEGER PRIMARY KEY for its rowid alias; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class ProjectRow(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    agent_kind: Mapped[str] = mapped_column(String(20), default="chat")
    model: Mapped[str | None] = mapped_column(String(100))
    system_prompt: Mapped[str | None] = mapped_column(Text)
    token_limit: Mapped[int | None] = mapped_column(Integer)
    workdir: Mapped[str | None] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    current_session_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime]


class ChatBindingRow(Base):
    """A chat key, its active project and its private session."""

    __tablename__ = "chat_bindings"
    __table_args__ = (UniqueConstraint("chat_ref", name="uq_chat_bindings_chat_ref"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chat_ref: Mapped[str] = mapped_column(String(300))
    interface: Mapped[str] = mapped_column(String(20))
    chat_id: Mapped[str] = mapped_column(String(100))
    thread_id: Mapped[str | None] = mapped_column(String(100))
    active_project_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("projects.id", ondelete="SET NULL")
    )
    current_session_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SessionRow(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_status_activity", "status", "last_activity_at"),
        Index("ix_sessions_chat_ref", "chat_ref"),
        Index("ix_sessions_project", "project_id"),
        Index("ix_sessions_interface", "interface"),
        # Ids are shown to users and cached by other processes: never reuse one.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(10))  # chat | project
    chat_ref: Mapped[str | None] = mapped_column(String(300))
    project_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("projects.id", ondelete="SET NULL")
    )
    interface: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime]
    last_activity_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    finalized_at: Mapped[datetime | None]
    # Counters kept as running totals so every check on the hot path is O(1).
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    summarized_through: Mapped[int] = mapped_column(Integer, default=0)
    context_start: Mapped[int] = mapped_column(Integer, default=1)
    message_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    unsummarized_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    summary_tokens: Mapped[int] = mapped_column(Integer, default=0)
    tool_calls: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    carried_summary: Mapped[str | None] = mapped_column(Text)
    closing_summary: Mapped[str | None] = mapped_column(Text)
    # Bumped by every write; how a process notices another one changed the session.
    version: Mapped[int] = mapped_column(Integer, default=1)


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # The idempotency key: a platform message id is unique within its chat.
        UniqueConstraint("chat_ref", "platform_message_id", name="uq_messages_platform_id"),
        Index("ix_messages_billed_to_created", "billed_to", "created_at"),
        # Only what is still owed to a chat (see Delivery): a handful of rows.
        Index(
            "ix_messages_delivery",
            "delivery",
            "created_at",
            sqlite_where=text("delivery IS NOT NULL"),
            postgresql_where=text("delivery IS NOT NULL"),
        ),
    )

    session_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    role: Mapped[str] = mapped_column(String(10))
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    author_id: Mapped[str | None] = mapped_column(String(100))
    author_name: Mapped[str | None] = mapped_column(String(200))
    chat_ref: Mapped[str | None] = mapped_column(String(300))
    platform_message_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_read_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    # Who a model reply is charged to ("telegram:123"): spend per user and per day.
    billed_to: Mapped[str | None] = mapped_column(String(120))
    # What is still owed: "awaiting" (a question not yet answered), "pending" (a reply
    # not yet delivered), "failed" (a reply the chat could not take); else NULL.
    delivery: Mapped[str | None] = mapped_column(String(10))
    # Of a reply still owed: how many of its platform messages the chat already has.
    delivered_parts: Mapped[int | None] = mapped_column(Integer)


class SummaryRow(Base):
    __tablename__ = "summaries"
    __table_args__ = (Index("ix_summaries_session_active", "session_id", "superseded_by"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[int] = mapped_column(BigId, ForeignKey("sessions.id", ondelete="CASCADE"))
    first_seq: Mapped[int] = mapped_column(Integer)
    last_seq: Mapped[int] = mapped_column(Integer)
    level: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    summarizer: Mapped[str] = mapped_column(String(60))
    fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    # Merged summaries are kept, pointing at the summary that replaced them.
    superseded_by: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime]


class EventRow(Base):
    """Tool calls, errors and lifecycle changes of a session; an error may carry what
    the failed model call was charged (spend with no reply to store)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_session_kind", "session_id", "kind"),
        Index("ix_events_billed_to_created", "billed_to", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("sessions.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(100))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_read_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    billed_to: Mapped[str | None] = mapped_column(String(120))


class JobRunRow(Base):
    __tablename__ = "job_runs"
    __table_args__ = (Index("ix_job_runs_job_started", "job", "started_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(60))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(20))
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # The process that ran it (its jobs.instance name); None for runs from before 0005.
    instance: Mapped[str | None] = mapped_column(String(120))


class TokenCalibrationRow(Base):
    """Estimated vs API-reported input tokens, per model."""

    __tablename__ = "token_calibration"

    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    estimated_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reported_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]


class CodeSessionRow(Base):
    """One Claude Code session id a project has used, and what it cost.

    A project has at most one ``current`` row: the session its next turn resumes.
    ``retired`` rows were left by a reset or replaced; ``lost`` ones could not be
    resumed. All are kept for /project history and export until retention.
    """

    __tablename__ = "code_sessions"
    __table_args__ = (
        UniqueConstraint("project_id", "session_id", name="uq_code_sessions_project_session"),
        Index("ix_code_sessions_project_status", "project_id", "status"),
        Index("ix_code_sessions_session", "session_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(10))  # current | retired | lost
    started_at: Mapped[datetime]
    last_used_at: Mapped[datetime]
    turns: Mapped[int] = mapped_column(Integer, default=0)
    num_turns: Mapped[int] = mapped_column(Integer, default=0)  # model round trips
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    context_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    chat_refs: Mapped[list[str]] = mapped_column(JSON, default=list)


class CodeTranscriptRow(Base):
    """One line of a Claude Code transcript (claude_agent_sdk's SessionStore).

    ``subpath`` is "" for the main transcript. ``id`` orders the lines as appended;
    ``uuid``, when the line has one, makes a retried append idempotent.
    """

    __tablename__ = "code_transcripts"
    __table_args__ = (
        UniqueConstraint(
            "project_key", "session_id", "subpath", "uuid", name="uq_code_transcripts_uuid"
        ),
        Index("ix_code_transcripts_key", "project_key", "session_id", "subpath", "id"),
        Index("ix_code_transcripts_session", "session_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_key: Mapped[str] = mapped_column(String(255))
    session_id: Mapped[str] = mapped_column(String(64))
    subpath: Mapped[str] = mapped_column(String(255), default="")
    uuid: Mapped[str | None] = mapped_column(String(64))
    entry: Mapped[dict[str, Any]] = mapped_column(JSON)
    mtime_ms: Mapped[int] = mapped_column(BigInteger)


class CodeTranscriptSessionRow(Base):
    """Per main transcript: its last write time and the SDK's folded summary."""

    __tablename__ = "code_transcript_sessions"

    project_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    mtime_ms: Mapped[int] = mapped_column(BigInteger)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)


class AttachmentBlobRow(Base):
    """The bytes of one file (an image, a PDF), kept once whoever sent it how often.

    ``last_used_at`` moves whenever a message links to it again, so that the sweep of
    unlinked blobs spares one a message is about to link to.
    """

    __tablename__ = "attachment_blobs"
    __table_args__ = (Index("ix_attachment_blobs_last_used", "last_used_at"),)

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime]


class MessageAttachmentRow(Base):
    """A file a message carried: what it was, what it costs in tokens, and its blob.

    Deleted with its message (the foreign key cascades); the blob outlives it until
    no message links to it (memory.store.attachments sweeps those).
    """

    __tablename__ = "message_attachments"
    __table_args__ = (
        ForeignKeyConstraint(
            ["session_id", "seq"],
            ["messages.session_id", "messages.seq"],
            name="fk_message_attachments_message",
            ondelete="CASCADE",
        ),
        Index("ix_message_attachments_sha256", "sha256"),
    )

    session_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(
        String(64), ForeignKey("attachment_blobs.sha256", name="fk_message_attachments_blob")
    )
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(10))  # image | pdf
    media_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    pages: Mapped[int | None] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)


class SessionImportRow(Base):
    """A session restored from an export, by the export's fingerprint: importing the
    same export again finds it here and changes nothing."""

    __tablename__ = "session_imports"
    __table_args__ = (Index("ix_session_imports_session", "session_id"),)

    origin: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[int] = mapped_column(BigId, ForeignKey("sessions.id", ondelete="CASCADE"))
    imported_at: Mapped[datetime]


class JobLeaseRow(Base):
    """Who runs a job now: taken by compare-and-set, renewed while the job runs, and
    free once ``expires_at`` has passed (so a crashed holder's lease runs out)."""

    __tablename__ = "job_leases"

    job: Mapped[str] = mapped_column(String(60), primary_key=True)
    holder: Mapped[str] = mapped_column(String(120))
    started_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    # Set when the holder's run ended and it let the lease go; None while it runs, or
    # when it crashed. A scheduled run skips a job that another instance finished
    # lately (started_at, finished_at), not one whose holder died.
    finished_at: Mapped[datetime | None]
