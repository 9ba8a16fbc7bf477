"""Chat runs: ``runs.kind`` ('code' | 'chat'), and ``runs.app_id`` nullable (a chat run has no app).

On SQLite, making a column nullable needs a table rebuild (batch mode: copy ``runs`` into a new
table, drop the old one, rename). That is safe here only because no table references ``runs``:
the server's connections run with ``PRAGMA foreign_keys=ON``, which cannot be switched off inside
the migration's transaction, and with it on, dropping a *referenced* table (users, apps) deletes
its rows first, cascading ``ON DELETE CASCADE`` into the children. A future migration that
rebuilds such a table must not use batch mode as is.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        # The server default fills existing rows: every run before this revision was a code run.
        # (The column comes last, not second as create_all puts it: order is cosmetic, and Alembic
        # only places columns in a forced rebuild, which PostgreSQL does not need.)
        batch.add_column(sa.Column("kind", sa.String(length=8), nullable=False, server_default="code"))
        batch.alter_column("app_id", existing_type=sa.String(length=32), nullable=True)


def downgrade() -> None:
    # Chat runs cannot exist in the old schema (app_id NOT NULL): they are deleted, not kept.
    op.execute(sa.text("DELETE FROM runs WHERE app_id IS NULL"))
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("app_id", existing_type=sa.String(length=32), nullable=False)
        batch.drop_column("kind")
