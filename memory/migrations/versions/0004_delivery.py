"""messages.delivery: what is still owed to a chat

A question the bot was asked is stored "awaiting" until it is answered (or the user
is told why not); a reply is stored "pending" before it is sent and cleared once
delivered, or marked "failed" when the chat cannot be reached. A partial index keeps
only those rows, so finding what is owed after a restart reads a handful of rows.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("delivery", sa.String(10), nullable=True))
    op.create_index(
        "ix_messages_delivery",
        "messages",
        ["delivery", "created_at"],
        sqlite_where=sa.text("delivery IS NOT NULL"),
        postgresql_where=sa.text("delivery IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_delivery", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("delivery")
