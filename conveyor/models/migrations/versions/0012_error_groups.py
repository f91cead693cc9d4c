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
#: Jobs per UPDATE that fills `error_type`, by range of their ids (the primary key).
FILL_BATCH = 10_000


def _fill_error_types(kind: str) -> None:
    """Each job's error type, from its error (a failed or retrying attempt's), `FILL_BATCH`
    jobs per statement by id range: no statement has to hold a whole large table's rows.

    All in the migration's one transaction, which holds the lock the ADD COLUMN took on
    `jobs` until it commits: the jobs table can be neither read nor written meanwhile (the
    README's upgrade notes say for how long)."""
    fill = f"UPDATE jobs SET error_type = {kind} WHERE error IS NOT NULL"
    if op.get_context().as_sql:  # an offline SQL script: one statement, no ids to read
        op.execute(fill)
        return
    bind = op.get_bind()
    after: object = None
    while True:
        bounds: dict[str, object] = {} if after is None else {"after": after}
        start = "" if after is None else " AND id > :after"
        # The last id of the range (None: it runs to the end of the table), read from the
        # primary key's index.
        upper = bind.execute(
            sa.text(f"SELECT id FROM jobs WHERE true{start} ORDER BY id LIMIT 1 OFFSET :skip"),
            {**bounds, "skip": FILL_BATCH - 1},
        ).scalar()
        if upper is None:
            bind.execute(sa.text(fill + start), bounds)
            return
        bind.execute(sa.text(f"{fill}{start} AND id <= :upper"), {**bounds, "upper": upper})
        after = upper


def upgrade() -> None:
    # Nullable, no default: PostgreSQL adds the column without rewriting the table.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("error_type", sa.String(length=200), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        _fill_error_types("left(error ->> 'type', 200)")
    else:
        _fill_error_types("substr(json_extract(error, '$.type'), 1, 200)")
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
