"""error groups: the error type of each job as a column, and an index of the failed jobs by
job type and error type

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Migrations are history: spelled as they were at this revision.
FAILED = "status IN ('failed')"


def upgrade() -> None:
    # Nullable, no default: PostgreSQL adds the column without rewriting the table.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("error_type", sa.String(length=200), nullable=True))
    # The jobs that have an error (their failed or retrying attempt's), in one statement:
    # the migration's transaction holds the table's lock until it commits anyway.
    if op.get_bind().dialect.name == "postgresql":
        kind = "left(error ->> 'type', 200)"
    else:
        kind = "substr(json_extract(error, '$.type'), 1, 200)"
    op.execute(f"UPDATE jobs SET error_type = {kind} WHERE error IS NOT NULL")
    op.create_index(
        "ix_jobs_failed_type_error_type",
        "jobs",
        ["type", "error_type", "finished_at", "id"],
        unique=False,
        postgresql_where=sa.text(FAILED),
        sqlite_where=sa.text(FAILED),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_jobs_failed_type_error_type",
        table_name="jobs",
        postgresql_where=sa.text(FAILED),
        sqlite_where=sa.text(FAILED),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("error_type")
