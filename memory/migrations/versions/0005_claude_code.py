"""Claude Code projects: the session ids each project used, and their transcripts

code_sessions: a project's Claude Code session ids (current / retired / lost) with
their turns, tokens, cost and the chats that used them. code_transcripts and
code_transcript_sessions: claude_agent_sdk's SessionStore on Palaver's database, so a
project's session resumes without the CLI's local files.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "code_sessions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "project_id",
            BigId,
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("num_turns", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("context_tokens", sa.BigInteger(), nullable=False),
        sa.Column("chat_refs", sa.JSON(), nullable=False),
        sa.UniqueConstraint("project_id", "session_id", name="uq_code_sessions_project_session"),
    )
    op.create_index("ix_code_sessions_project_status", "code_sessions", ["project_id", "status"])
    op.create_index("ix_code_sessions_session", "code_sessions", ["session_id"])

    op.create_table(
        "code_transcripts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("project_key", sa.String(255), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("subpath", sa.String(255), nullable=False),
        sa.Column("uuid", sa.String(64), nullable=True),
        sa.Column("entry", sa.JSON(), nullable=False),
        sa.Column("mtime_ms", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint(
            "project_key", "session_id", "subpath", "uuid", name="uq_code_transcripts_uuid"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_code_transcripts_key",
        "code_transcripts",
        ["project_key", "session_id", "subpath", "id"],
    )
    op.create_index("ix_code_transcripts_session", "code_transcripts", ["session_id"])

    op.create_table(
        "code_transcript_sessions",
        sa.Column("project_key", sa.String(255), primary_key=True),
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("mtime_ms", sa.BigInteger(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("code_transcript_sessions")
    op.drop_index("ix_code_transcripts_session", table_name="code_transcripts")
    op.drop_index("ix_code_transcripts_key", table_name="code_transcripts")
    op.drop_table("code_transcripts")
    op.drop_index("ix_code_sessions_session", table_name="code_sessions")
    op.drop_index("ix_code_sessions_project_status", table_name="code_sessions")
    op.drop_table("code_sessions")
