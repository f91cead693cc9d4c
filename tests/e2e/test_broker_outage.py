"""RabbitMQ stopped while jobs are submitted: every job is accepted, runs once and succeeds."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import Job, JobEvent
from tests.e2e.processes import Api, Processes, rabbitmq_stopped
from tests.stack import wait_until

pytestmark = pytest.mark.e2e


def test_jobs_submitted_while_rabbitmq_is_down_all_run_exactly_once(
    procs: Processes, platform_env: dict[str, str], token: str, pg_db: sessionmaker[Session]
) -> None:
    web, api = procs.web(platform_env)
    api = api.with_token(token)
    worker = procs.worker(platform_env)
    ids = [api.submit("system.echo", {"n": n})["id"] for n in range(5)]

    with rabbitmq_stopped():
        assert _broker_check(api).startswith("error"), "/readyz should name the broker"
        ids += [api.submit("system.echo", {"n": n})["id"] for n in range(5, 10)]
        # The outbox sweep tried to publish them and failed: the rows wait, unpublished.
        web.wait_for_output(r"sweep failed \(will retry\)", timeout=15)
        worker.wait_for_output(r"Consumer encountered a connection error", timeout=15)
        ids += [api.submit("system.echo", {"n": n})["id"] for n in range(10, 15)]

    wait_until(lambda: _broker_check(api) == "ok", timeout=30, interval=0.2)
    ids += [api.submit("system.echo", {"n": n})["id"] for n in range(15, 20)]

    for n, job_id in enumerate(ids):
        done = api.wait_finished(job_id, within=30)
        assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 1, {"n": n})
    # Observed with Dramatiq 2.2.1: the worker process does not exit when RabbitMQ goes away;
    # its consumer threads log the connection error and reconnect every 3 s, so no restart
    # (by a supervisor, or here) is needed. The web process stays up as well.
    assert (worker.returncode, web.returncode) == (None, None)
    with pg_db() as session:
        rows = dict(session.execute(select(Job.id, Job.attempts)).all())
        events = session.execute(
            select(JobEvent.job_id, JobEvent.status, func.count())
            .where(JobEvent.kind == "status")
            .group_by(JobEvent.job_id, JobEvent.status)
        ).all()
    assert rows == {uuid.UUID(job_id): 1 for job_id in ids}
    history: dict[uuid.UUID, dict[str, int]] = {}
    for job_id, status, count in events:
        history.setdefault(job_id, {})[status] = count
    # Each job was claimed once and finished once: a redelivered message was skipped.
    once = {"queued": 1, "running": 1, "succeeded": 1}
    assert history == {uuid.UUID(job_id): once for job_id in ids}


def _broker_check(api: Api) -> str:
    """What `/readyz` says of the broker."""
    status, body = api.request("GET", "/readyz")
    assert status in (200, 503), (status, body)
    return str(body["checks"]["broker"])
