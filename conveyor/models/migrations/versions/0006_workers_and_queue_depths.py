"""the worker registry (workers) and an index for queue depths

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Migrations are history: spelled as they were at this revision.
UNSTARTED = "status IN ('scheduled', 'queued', 'retrying')"
DUE = "coalesce(next_attempt_at, run_at, created_at)"


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("pool", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column(
            "queues",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("jobs_in_hand", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index("ix_workers_last_heartbeat_at", "workers", ["last_heartbeat_at"], unique=False)
    op.create_index(
        "ix_jobs_unstarted_queue_status_due",
        "jobs",
        ["queue", "status", sa.text(DUE)],
        unique=False,
        postgresql_where=sa.text(UNSTARTED),
        sqlite_where=sa.text(UNSTARTED),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_jobs_unstarted_queue_status_due",
        table_name="jobs",
        postgresql_where=sa.text(UNSTARTED),
        sqlite_where=sa.text(UNSTARTED),
    )
    op.drop_index("ix_workers_last_heartbeat_at", table_name="workers")
    op.drop_table("workers")
