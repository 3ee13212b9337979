"""events carry a charge: what a failed model call cost, and whom it was charged to

An answer that broke off midway, or attempts that timed out while the API answered,
cost money with no reply to store. The error event of the turn carries that usage and
the user it is billed to, so that the spend caps count it.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cost_usd", sa.Float(), nullable=True))
        batch.add_column(sa.Column("billed_to", sa.String(120), nullable=True))
    op.create_index("ix_events_billed_to_created", "events", ["billed_to", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_events_billed_to_created", table_name="events")
    with op.batch_alter_table("events") as batch:
        for name in (*_COLUMNS, "cost_usd", "billed_to"):
            batch.drop_column(name)
