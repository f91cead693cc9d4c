"""The direct connections of the claim and finish path on PostgreSQL: a connection that the
server cut while it sat idle (as a restart cuts them all) is replaced, not failed on."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import direct
from conveyor.errors import InfrastructureError
from conveyor.models import Job, JobStatus, Role
from conveyor.services import runs, submissions
from conveyor.services.submissions import NewJob
from conveyor.services.users import create_user
from tests.stack import wait_until

pytestmark = pytest.mark.integration

LEASE = dt.timedelta(seconds=30)


def _job(db: sessionmaker[Session]) -> Job:
    owner = create_user(db, f"{uuid.uuid4().hex[:8]}@example.com", Role.MEMBER)
    new = NewJob(
        job_type="system.echo", queue="system", payload={}, max_retries=0, owner_id=owner.id
    )
    job, _ = submissions.write(db, new)
    return job


def _cut_this_threads_direct_connection(db: sessionmaker[Session]) -> None:
    """End the server side of this thread's direct connection, as a database restart does."""
    connections = direct(db)
    assert connections is not None
    found = connections.fetchone("SELECT pg_backend_pid() AS pid", {})
    assert found is not None
    with db() as session:
        session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": found["pid"]})

    def gone() -> bool:
        with db() as session:
            return not session.execute(
                text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"), {"pid": found["pid"]}
            ).first()

    wait_until(gone, timeout=10, interval=0.02)


def test_a_claim_on_a_connection_cut_while_idle_goes_through_on_a_new_one(
    pg_db: sessionmaker[Session],
) -> None:
    job = _job(pg_db)
    _cut_this_threads_direct_connection(pg_db)
    claimed = runs.claim(pg_db, job.id, worker="w", lease=LEASE)
    assert claimed is not None and claimed.attempts == 1
    _cut_this_threads_direct_connection(pg_db)
    assert runs.finish(pg_db, job.id, 1, JobStatus.SUCCEEDED, result={"ok": True})


def test_a_statement_not_marked_resendable_fails_once_then_the_next_reconnects(
    pg_db: sessionmaker[Session],
) -> None:
    connections = direct(pg_db)
    assert connections is not None
    _cut_this_threads_direct_connection(pg_db)
    with pytest.raises(InfrastructureError, match="database unavailable"):
        connections.execute("SELECT 1", {})
    assert connections.fetchone("SELECT 1 AS one", {}) == {"one": 1}
