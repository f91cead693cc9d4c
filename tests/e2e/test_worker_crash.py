"""A worker killed with SIGKILL in the middle of a job: another worker finishes the job."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import Job, JobEvent
from tests.e2e.processes import Processes
from tests.stack import wait_until

pytestmark = pytest.mark.e2e


def test_job_of_a_killed_worker_is_finished_by_the_next_worker(
    procs: Processes, platform_env: dict[str, str], token: str, pg_db: sessionmaker[Session]
) -> None:
    _, api = procs.web(platform_env)
    api = api.with_token(token)
    first = procs.worker(platform_env)
    job = api.submit("system.sleep", {"seconds": 4, "steps": 8})

    def started() -> dict[str, Any] | None:
        seen: dict[str, Any] = api.get(job["id"])
        return seen if seen["status"] == "running" and (seen["progress"] or 0) > 0 else None

    midway = wait_until(started, timeout=20, interval=0.05)
    assert midway["progress"] < 1
    job_id = uuid.UUID(job["id"])
    lost_worker = _row(pg_db, job_id).worker

    assert first.kill() == -9  # the whole group: Dramatiq's main process and its fork
    procs.worker(platform_env)

    done = api.wait_finished(job["id"], within=30)
    assert (done["status"], done["attempts"]) == ("succeeded", 2), done
    assert done["result"] == {"slept": 4.0}
    with pg_db() as session:
        statuses = [
            tuple(event)
            for event in session.execute(
                select(JobEvent.status, JobEvent.attempt)
                .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
                .order_by(JobEvent.id)
            )
        ]
    assert _row(pg_db, job_id).worker not in (None, lost_worker)
    # Claimed; lost with its worker; re-queued by the reconciler (a `retrying` event) unless
    # the redelivered message found the lease expired first; claimed again; finished.
    assert statuses[:2] == [("queued", 0), ("running", 1)]
    assert set(statuses[2:-2]) <= {("retrying", 1)}
    assert statuses[-2:] == [("running", 2), ("succeeded", 2)]


def _row(db: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with db() as session:
        row = session.get(Job, job_id)
    assert row is not None
    return row
