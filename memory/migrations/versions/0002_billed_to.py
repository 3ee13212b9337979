"""messages.billed_to: who a model reply is charged to, for spend per user and day

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("billed_to", sa.String(length=120), nullable=True))
        batch.create_index("ix_messages_billed_to_created", ["billed_to", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_billed_to_created")
        batch.drop_column("billed_to")
