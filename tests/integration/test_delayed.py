"""Delayed jobs and child jobs over HTTP, through a real broker and worker: both brokers."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import select

import tests.jobs  # noqa: F401  (test-only job types)
from conveyor.models import Job, JobEvent
from conveyor.models.base import utcnow
from tests.stack import Stack

pytestmark = pytest.mark.integration


async def post(stack: Stack, body: dict[str, Any], expect: int = 202) -> dict[str, Any]:
    response = await stack.client.post("/v1/jobs", json=body, headers=stack.headers())
    answer = await response.json()
    assert response.status == expect, answer
    return answer  # type: ignore[no-any-return]


async def listed(stack: Stack, status: str) -> list[str]:
    response = await stack.client.get(
        "/v1/jobs", params={"status": status, "limit": "100"}, headers=stack.headers()
    )
    page = await response.json()
    assert response.status == 200, page
    return [item["id"] for item in page["items"]]


def at(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def statuses(stack: Stack, job_id: str) -> list[tuple[str, str | None]]:
    """The job's status events, oldest first: (status, message)."""
    with stack.db() as session:
        rows = session.execute(
            select(JobEvent.status, JobEvent.message)
            .where(JobEvent.job_id == uuid.UUID(job_id), JobEvent.kind == "status")
            .order_by(JobEvent.id)
        )
        return [(status, message) for status, message in rows]


async def test_a_delayed_job_is_scheduled_then_runs_within_a_second_of_its_run_at(
    stack: Stack,
) -> None:
    before = utcnow()
    job = await post(stack, {"type": "system.echo", "payload": {"n": 1}, "delay_seconds": 1.5})
    assert job["status"] == "scheduled"
    assert job["run_at"] is not None and job["next_attempt_at"] == job["run_at"]
    ahead = (at(job["run_at"]) - before).total_seconds()
    assert 1.4 <= ahead <= 2.5
    assert job["id"] in await listed(stack, "scheduled")
    assert job["id"] not in await listed(stack, "queued")

    done = await stack.wait_for(job["id"], "succeeded", "failed", within=15)
    assert done["status"] == "succeeded", done
    assert done["result"] == {"n": 1}
    row = stack.row(job["id"])
    assert row.run_at is not None and row.started_at is not None
    lag = (row.started_at - row.run_at).total_seconds()
    assert 0 <= lag < 1.0, f"started {lag:.3f}s after its run_at"
    assert row.attempts == 1
    assert statuses(stack, job["id"]) == [
        ("scheduled", None),
        ("queued", "due"),
        ("running", None),
        ("succeeded", None),
    ]
    assert job["id"] not in await listed(stack, "scheduled")


async def test_a_scheduled_job_cancelled_before_it_is_due_never_runs(stack: Stack) -> None:
    job = await post(stack, {"type": "system.echo", "payload": {"n": 2}, "delay_seconds": 1})
    assert job["status"] == "scheduled"
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    cancelled = await response.json()
    assert response.status == 200, cancelled
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert cancelled["next_attempt_at"] is None
    assert job["id"] not in await listed(stack, "scheduled")

    # A job due after it has run: by then the cancelled one was due too, and passed over.
    later = await post(stack, {"type": "system.echo", "payload": {"n": 3}, "delay_seconds": 1.5})
    assert (await stack.wait_for(later["id"], "succeeded", within=15))["result"] == {"n": 3}
    assert at(later["run_at"]) > at(job["run_at"])
    row = stack.row(job["id"])
    assert (row.status, row.attempts, row.started_at) == ("cancelled", 0, None)
    assert row.published_at is None
    assert statuses(stack, job["id"]) == [("scheduled", None), ("cancelled", "cancelled")]


async def test_a_run_at_in_the_past_runs_at_once(stack: Stack) -> None:
    past = utcnow() - dt.timedelta(hours=1)
    job = await post(
        stack, {"type": "system.echo", "payload": {"n": 4}, "run_at": past.isoformat()}
    )
    assert job["status"] == "queued"
    assert at(job["run_at"]) == past
    assert job["next_attempt_at"] is None
    done = await stack.wait_for(job["id"], "succeeded", within=10)
    assert done["result"] == {"n": 4}
    row = stack.row(job["id"])
    assert row.run_at == past  # stored, not only answered
    assert row.started_at is not None
    assert (row.started_at - row.created_at).total_seconds() < 2


async def test_a_run_at_with_an_offset_is_kept_as_the_same_instant(stack: Stack) -> None:
    when = (utcnow() + dt.timedelta(minutes=30)).astimezone(dt.timezone(dt.timedelta(hours=-5)))
    job = await post(stack, {"type": "system.echo", "payload": {}, "run_at": when.isoformat()})
    assert job["status"] == "scheduled"
    assert at(job["run_at"]) == when
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert response.status == 200


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"run_at": "2030-01-01T09:00:00", "delay_seconds": None}, "run_at"),
        ({"run_at": "2030-01-01T09:00:00Z", "delay_seconds": 5}, "delay_seconds"),
        ({"delay_seconds": -1}, "delay_seconds"),
        ({"run_at": "2999-01-01T00:00:00Z"}, "run_at"),
    ],
    ids=["no-offset", "both", "negative", "too-far"],
)
async def test_a_bad_schedule_is_a_422_naming_its_field(
    stack: Stack, extra: dict[str, Any], field: str
) -> None:
    body = {"type": "system.echo", "payload": {}, **extra}
    problem = await post(stack, body, expect=422)
    assert field in [error["field"] for error in problem["errors"]], problem
    with stack.db() as session:
        assert session.scalars(select(Job)).first() is None


async def test_a_child_submitted_by_a_running_job_runs_and_names_its_parent(
    stack: Stack,
) -> None:
    parent = await post(stack, {"type": "testing.spawn", "payload": {"n": 7}})
    done = await stack.wait_for(parent["id"], "succeeded", "failed", within=15)
    assert done["status"] == "succeeded", done
    child_id = done["result"]["child"]
    child = await stack.wait_for(child_id, "succeeded", "failed", within=15)
    assert child["status"] == "succeeded", child
    assert child["parent_id"] == parent["id"]
    assert child["owner_id"] == parent["owner_id"]
    assert child["result"] == {"n": 7}
    assert parent["parent_id"] is None


async def test_a_retried_parent_with_a_key_gets_the_same_child(stack: Stack) -> None:
    parent = await post(
        stack,
        {"type": "testing.spawn", "payload": {"n": 8, "key": "only-child", "fail_first": True}},
    )
    done = await stack.wait_for(parent["id"], "succeeded", "failed", within=20)
    assert (done["status"], done["attempts"]) == ("succeeded", 2), done
    child = await stack.wait_for(done["result"]["child"], "succeeded", within=15)
    assert child["parent_id"] == parent["id"]
    assert child["idempotency_key"] == "only-child"
    with stack.db() as session:
        children = session.scalars(
            select(Job.id).where(Job.parent_id == uuid.UUID(parent["id"]))
        ).all()
    assert [str(c) for c in children] == [child["id"]]
