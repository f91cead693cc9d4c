"""Pausing and resuming a queue over HTTP, on the real stack: PostgreSQL, a real broker and an
in-process Dramatiq worker."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import tests.jobs  # noqa: F401  (test-only job types)
from conveyor.models import AuditEvent, JobEvent, Worker
from conveyor.services import outbox, queue_pauses, runs
from conveyor.services.users import get_by_email
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.integration
#: The mechanism is in the database, the same on both brokers: one test runs on each.
RABBITMQ = pytest.mark.parametrize("broker_kind", ["rabbitmq"])

PARKED = "waits: its queue is paused"


async def post(stack: Stack, path: str, body: Any = None, *, expect: int = 200) -> Any:
    response = await stack.client.post(path, json=body, headers=stack.headers(stack.admin_token))
    found = await response.json()
    assert response.status == expect, found
    return found


def parked(caplog: pytest.LogCaptureFixture, job_id: str) -> bool:
    """The worker took the job's message and left the job waiting for the resume."""
    return any(PARKED in r.getMessage() and job_id in r.getMessage() for r in caplog.records)


def runs_of(stack: Stack, job_id: str) -> int:
    with stack.db() as session:
        found = session.scalar(
            select(func.count()).where(
                JobEvent.job_id == uuid.UUID(job_id), JobEvent.status == "running"
            )
        )
    return int(found or 0)


def workers_recorded(stack: Stack) -> int:
    with stack.db() as session:
        return int(session.scalar(select(func.count()).select_from(Worker)) or 0)


@pytest.mark.parametrize("broker_kind", ["rabbitmq", "redis"])
async def test_a_paused_queue_keeps_its_jobs_until_resumed_then_runs_each_once(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor.workers.lifecycle")
    paused = await post(stack, "/v1/queues/system/pause", {"reason": "maintenance"})
    assert paused == {"queue": "system", "paused": True, "changed": True, "published": 0}

    ids = [(await stack.submit("system.echo", {"i": i}))["id"] for i in range(3)]
    # Submissions are accepted; the worker takes each message and leaves the job waiting.
    wait_until(lambda: all(parked(caplog, job_id) for job_id in ids))
    for job_id in ids:
        row = stack.row(job_id)
        assert (row.status, row.attempts, row.published_at) == ("queued", 0, None)
        assert runs_of(stack, job_id) == 0
    # The outbox sweep leaves them alone: no message goes round while the queue is paused.
    assert not outbox.publish_pending(
        stack.db,
        stack.container.enqueuer,
        grace=dt.timedelta(0),
        requeue_after=dt.timedelta(seconds=stack.settings.requeue_after_seconds),
    )
    assert all(stack.row(job_id).published_at is None for job_id in ids)

    resumed = await post(stack, "/v1/queues/system/resume")
    assert resumed == {"queue": "system", "paused": False, "changed": True, "published": 3}
    for job_id in ids:
        assert (await stack.wait_for(job_id, "succeeded"))["attempts"] == 1
        assert runs_of(stack, job_id) == 1


@RABBITMQ
async def test_running_jobs_finish_and_delayed_or_retrying_ones_wait_for_the_resume(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor.workers.lifecycle")
    sleeping = await stack.submit("system.sleep", {"seconds": 3.0, "steps": 5})
    retrying = await stack.submit("testing.retry_once", {"seconds": 3.0})
    wait_until(lambda: stack.row(sleeping["id"]).status == "running")
    wait_until(lambda: stack.row(retrying["id"]).status == "retrying")
    await post(stack, "/v1/queues/system/pause")
    assert stack.row(sleeping["id"]).status == "running"  # the pause landed as it ran
    response = await stack.client.post(
        "/v1/jobs",
        json={"type": "system.echo", "payload": {}, "delay_seconds": 0.5},
        headers=stack.headers(),
    )
    delayed = await response.json()
    assert response.status == 202, delayed

    # The job that was running when the pause landed finishes.
    assert (await stack.wait_for(sleeping["id"], "succeeded"))["attempts"] == 1
    # The retry's message comes at its time and is parked; the delayed job comes due and is
    # queued, unpublished.
    wait_until(lambda: parked(caplog, retrying["id"]))
    wait_until(lambda: stack.row(delayed["id"]).status == "queued")
    retry_row, delayed_row = stack.row(retrying["id"]), stack.row(delayed["id"])
    assert (retry_row.status, retry_row.attempts, retry_row.published_at) == (
        "retrying",
        1,
        None,
    )
    assert (delayed_row.attempts, delayed_row.published_at) == (0, None)

    resumed = await post(stack, "/v1/queues/system/resume")
    assert resumed["published"] == 2
    assert (await stack.wait_for(retrying["id"], "succeeded"))["attempts"] == 2
    assert (await stack.wait_for(delayed["id"], "succeeded"))["attempts"] == 1


@RABBITMQ
async def test_a_resume_between_the_claim_and_the_park_leaves_no_job_behind(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job published before the pause; the worker's claim finds the queue paused; the operator
    # resumes before the worker parks the job. The resume publishes nothing (the job's message
    # was still out): without a second claim the job would wait for the sweep's
    # `requeue_after`, a quarter of an hour.
    admin = get_by_email(stack.db, "admin@example.com")
    park = runs.park
    resumed: list[int] = []

    def resumed_first(db: sessionmaker[Session], job_id: uuid.UUID) -> runs.Park:
        resumed.append(queue_pauses.resume(db, stack.container.enqueuer, "system", admin))
        return park(db, job_id)

    monkeypatch.setattr(runs, "park", resumed_first)
    stack.stop_worker()
    job = await stack.submit("system.echo", {"n": 1})  # published before the pause
    wait_until(lambda: stack.row(job["id"]).published_at is not None)
    await post(stack, "/v1/queues/system/pause")
    stack.start_worker()

    done = await stack.wait_for(job["id"], "succeeded", within=10)
    assert resumed == [0]  # the resume had nothing to publish
    assert done["attempts"] == 1 and runs_of(stack, job["id"]) == 1


@RABBITMQ
async def test_pause_and_resume_are_idempotent_and_audited(stack: Stack) -> None:
    first = await post(stack, "/v1/queues/system/pause", {"reason": "deploy"})
    again = await post(stack, "/v1/queues/system/pause")
    assert (first["changed"], again["changed"]) == (True, False)
    assert (await post(stack, "/v1/queues/system/resume"))["changed"] is True
    assert (await post(stack, "/v1/queues/system/resume"))["changed"] is False

    admin = get_by_email(stack.db, "admin@example.com")
    with stack.db() as session:
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action.in_(["queue_paused", "queue_resumed"]))
            .order_by(AuditEvent.id)
        ).all()
    assert [e.action for e in events] == ["queue_paused", "queue_resumed"]
    assert all(e.actor_id == admin.id and e.ip is not None for e in events)
    assert events[0].details == {"queue": "system", "reason": "deploy", "by": admin.email}
    assert events[1].details["queue"] == "system"


@RABBITMQ
async def test_the_queue_list_shows_paused_queues_and_their_consumers(stack: Stack) -> None:
    admin = stack.headers(stack.admin_token)

    async def system() -> dict[str, Any]:
        response = await stack.client.get("/v1/queues", headers=admin)
        body = await response.json()
        assert response.status == 200, body
        return next(q for q in body["items"] if q["name"] == "system")

    await post(stack, "/v1/queues/system/pause", {"reason": "maintenance"})
    job = await stack.submit("system.echo", {})
    found = await system()
    assert found["paused"] is True and found["pause_reason"] == "maintenance"
    assert found["paused_at"] is not None and found["waiting"] == 1
    # The stack's worker (4 threads, every queue) records itself with its first heartbeat.
    wait_until(lambda: workers_recorded(stack))
    found = await system()
    assert (found["consumers"], found["consumer_threads"]) == (1, 4)

    await post(stack, "/v1/queues/system/resume")
    await stack.wait_for(job["id"], "succeeded")
    found = await system()
    assert (found["paused"], found["paused_at"], found["pause_reason"]) == (False, None, None)


@RABBITMQ
async def test_only_operators_pause_and_only_known_queues(stack: Stack) -> None:
    for path in ["/v1/queues", "/v1/queues/system/pause", "/v1/queues/system/resume"]:
        method = stack.client.get if path == "/v1/queues" else stack.client.post
        response = await method(path, headers=stack.headers())
        assert response.status == 403, path
        assert response.content_type == "application/problem+json"
    for path in ["/v1/queues/nowhere/pause", "/v1/queues/nowhere/resume"]:
        problem = await post(stack, path, expect=404)
        assert "nowhere" in problem["detail"]
    problem = await post(stack, "/v1/queues/system/pause", {"reason": "x" * 201}, expect=422)
    assert problem["errors"][0]["field"] == "reason"
    response = await stack.client.post(
        "/v1/queues/system/pause", data=b"{", headers=stack.headers(stack.admin_token)
    )
    assert response.status == 400
    response = await stack.client.get("/v1/queues", headers=stack.headers(stack.admin_token))
    assert all(not q["paused"] for q in (await response.json())["items"])
