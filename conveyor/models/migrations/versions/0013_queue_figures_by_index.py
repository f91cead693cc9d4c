"""queue figures by index only: the index of the jobs not started yet also holds the columns
their due time is computed from (PostgreSQL)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 12:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Migrations are history: spelled as they were at this revision.
UNSTARTED = "status IN ('scheduled', 'queued', 'retrying')"
DUE = "coalesce(next_attempt_at, run_at, created_at)"
NAME = "ix_jobs_unstarted_queue_status_due"


def _recreate(include: list[str]) -> None:
    # A partial index of the jobs not started yet: a few percent of the table, built in a
    # moment; the migration's transaction holds the table's lock until it commits anyway.
    op.drop_index(NAME, table_name="jobs", postgresql_where=sa.text(UNSTARTED))
    op.create_index(
        NAME,
        "jobs",
        ["queue", "status", sa.text(DUE)],
        unique=False,
        postgresql_where=sa.text(UNSTARTED),
        postgresql_include=include,
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # SQLite has no INCLUDE: nothing changes
        _recreate(["next_attempt_at", "run_at", "created_at"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate([])
