"""``runs.published``: a completed run's files, preview URL and checkpoint (its `done` event's).

Only ADD COLUMN: no table rebuild on SQLite (see 0002 for why that matters). Rows of runs
completed before this revision have none: their recorded `done` event carries empty values.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("published", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("published")
