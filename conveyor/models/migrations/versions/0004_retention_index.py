"""retention: an index of finished jobs by when they finished

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Migrations are history: the statuses are spelled as they were at this revision.
FINISHED = "status IN ('succeeded', 'failed', 'cancelled')"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_finished_finished_at",
        "jobs",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text(FINISHED),
        sqlite_where=sa.text(FINISHED),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_jobs_finished_finished_at",
        table_name="jobs",
        postgresql_where=sa.text(FINISHED),
        sqlite_where=sa.text(FINISHED),
    )
