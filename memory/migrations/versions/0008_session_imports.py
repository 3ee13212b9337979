"""session_imports: sessions restored from an export, by the export's fingerprint

Importing the same export twice must change nothing; an imported session keeps its
id only where that id was never handed out here, so the export's fingerprint is
what finds it again.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "session_imports",
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.Column("session_id", BigId, nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("origin"),
    )
    op.create_index("ix_session_imports_session", "session_imports", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_session_imports_session", table_name="session_imports")
    op.drop_table("session_imports")
