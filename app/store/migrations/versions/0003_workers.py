"""Several workers: ``runs.owner_worker``, ``runs.stop_mode``, ``runs.rolled_back``, and ``workers``.

Only ADD COLUMN and CREATE TABLE: no table rebuild on SQLite (see 0002 for why that matters).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("owner_worker", sa.String(length=64), nullable=True))
    op.add_column("runs", sa.Column("stop_mode", sa.String(length=16), nullable=True))
    op.add_column("runs", sa.Column("rolled_back", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_runs_owner_worker", "runs", ["owner_worker"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("stopped_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_index("ix_runs_owner_worker", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("rolled_back")
        batch.drop_column("stop_mode")
        batch.drop_column("owner_worker")
