"""messages.delivered_parts: how much of a reply its chat already has

A long reply goes out in several platform messages. When the platform stops it
halfway (a long flood wait, an outage, a restart), the parts already shown are
counted here, so that delivery resumes at the first part the chat does not have
and no part is shown twice. NULL: none yet (or nothing owed any more).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("delivered_parts", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("delivered_parts")
