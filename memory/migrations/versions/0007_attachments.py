"""Attachments: images and PDFs kept with their message

attachment_blobs: a file's bytes, once per content (keyed by SHA-256).
message_attachments: which message carried which file, what it was and what it costs
in tokens; deleted with the message.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "attachment_blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_attachment_blobs_last_used", "attachment_blobs", ["last_used_at"])

    op.create_table(
        "message_attachments",
        sa.Column("session_id", BigId, primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("position", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column(
            "sha256",
            sa.String(64),
            sa.ForeignKey("attachment_blobs.sha256", name="fk_message_attachments_blob"),
            nullable=False,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id", "seq"],
            ["messages.session_id", "messages.seq"],
            name="fk_message_attachments_message",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_message_attachments_sha256", "message_attachments", ["sha256"])


def downgrade() -> None:
    op.drop_index("ix_message_attachments_sha256", table_name="message_attachments")
    op.drop_table("message_attachments")
    op.drop_index("ix_attachment_blobs_last_used", table_name="attachment_blobs")
    op.drop_table("attachment_blobs")
