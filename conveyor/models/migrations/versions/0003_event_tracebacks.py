"""the traceback of a failed attempt on its event

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The job's own traceback lives in its `error` (JSON): no column for it on `jobs`.
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("traceback", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.drop_column("traceback")
