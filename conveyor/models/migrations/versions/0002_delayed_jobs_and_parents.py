"""delayed jobs (the scheduled status, run_at) and parent jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Migrations are history: the status lists are spelled as they were at this revision.
STATUSES = "'scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'"
OLD_STATUSES = "'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("run_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key(
            op.f("fk_jobs_parent_id_jobs"), "jobs", ["parent_id"], ["id"], ondelete="SET NULL"
        )
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_status"), f"status IN ({STATUSES})")
    op.create_index("ix_jobs_parent_id", "jobs", ["parent_id"], unique=False)
    op.create_index(
        "ix_jobs_scheduled_next_attempt_at",
        "jobs",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('scheduled')"),
        sqlite_where=sa.text("status IN ('scheduled')"),
    )


def downgrade() -> None:
    op.execute("UPDATE jobs SET status = 'queued' WHERE status = 'scheduled'")
    op.drop_index(
        "ix_jobs_scheduled_next_attempt_at",
        table_name="jobs",
        postgresql_where=sa.text("status IN ('scheduled')"),
        sqlite_where=sa.text("status IN ('scheduled')"),
    )
    op.drop_index("ix_jobs_parent_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_status"), f"status IN ({OLD_STATUSES})")
        batch.drop_constraint(op.f("fk_jobs_parent_id_jobs"), type_="foreignkey")
        batch.drop_column("run_at")
        batch.drop_column("parent_id")
