"""sessions.id never reused on SQLite (AUTOINCREMENT)

Without AUTOINCREMENT, SQLite hands a deleted session's id to the next session when
it was the highest one; another process that still caches the old id would then
see a different conversation under it. PostgreSQL sequences never reuse ids.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "sessions", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "sessions", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
