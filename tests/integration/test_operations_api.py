"""Retry, bulk cancel/retry and queue purge over HTTP, on the real stack."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from conveyor.models import JobEvent
from tests.stack import Stack, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("broker_kind", ["rabbitmq"])]


async def test_a_failed_job_retried_by_its_owner_runs_again(stack: Stack) -> None:
    job = await stack.submit("system.fail", {"failures": 10})
    failed = await stack.wait_for(job["id"], "failed")
    assert failed["attempts"] == 4  # one run and three retries

    response = await stack.client.post(f"/v1/jobs/{job['id']}/retry", headers=stack.headers())
    body = await response.json()
    assert response.status == 202, body
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert body["id"] == job["id"] and body["status"] == "queued"
    assert body["error"]["type"] == "RuntimeError"  # the last error, until the next outcome

    again = await stack.wait_for(job["id"], "failed")
    assert again["attempts"] == 8  # attempts go on counting: four more runs
    assert again["max_retries"] == 4 + 3 and again["worker_losses"] == 0
    with stack.db() as session:
        found = session.scalars(
            select(JobEvent.message).where(JobEvent.message.like("retried by %"))
        ).all()
    assert found == ["retried by member@example.com (was failed)"]


async def test_retry_answers_409_unless_failed_or_cancelled_and_404_for_others(
    stack: Stack,
) -> None:
    job = await stack.submit("system.echo", {"a": 1})
    await stack.wait_for(job["id"], "succeeded")
    path = f"/v1/jobs/{job['id']}/retry"
    response = await stack.client.post(path, headers=stack.headers())
    problem = await response.json()
    assert response.status == 409
    assert response.content_type == "application/problem+json"
    assert "succeeded" in problem["detail"]
    response = await stack.client.post(path, headers=stack.headers(stack.other_token))
    assert response.status == 404


async def test_bulk_routes_are_for_admins(stack: Stack) -> None:
    for path, body in [
        ("/v1/jobs/cancel", {"status": ["queued"]}),
        ("/v1/jobs/retry", {"status": ["failed"]}),
        ("/v1/queues/system/purge", None),
    ]:
        response = await stack.client.post(path, json=body, headers=stack.headers())
        assert response.status == 403, path
        assert response.content_type == "application/problem+json"


async def test_bulk_cancel_and_retry_by_filter(stack: Stack) -> None:
    stack.stop_worker()  # keep them queued
    mine = [(await stack.submit("system.echo", {"i": i}))["id"] for i in range(3)]
    theirs = (await stack.submit("system.echo", {}, token=stack.other_token))["id"]
    admin = stack.headers(stack.admin_token)
    # A bulk cancel skips the rows another transaction holds, such as the publisher marking
    # them published: let that end first, so the counts below are exact.
    wait_until(lambda: all(stack.row(job_id).published_at for job_id in [*mine, theirs]))

    response = await stack.client.post(
        "/v1/jobs/cancel", json={"owner": "member@example.com", "limit": 2}, headers=admin
    )
    first = await response.json()
    assert response.status == 200, first
    assert (first["count"], first["more"]) == (2, True)
    response = await stack.client.post(
        "/v1/jobs/cancel", json={"owner": "member@example.com"}, headers=admin
    )
    assert (await response.json())["count"] == 1
    for job_id in mine:
        assert (await stack.get(job_id))["status"] == "cancelled"
    assert (await stack.get(theirs, token=stack.other_token))["status"] == "queued"

    response = await stack.client.post(
        "/v1/jobs/retry", json={"status": ["cancelled"], "type": ["system.echo"]}, headers=admin
    )
    retried = await response.json()
    assert (retried["count"], retried["more"]) == (3, False)
    stack.start_worker()
    for job_id in mine:
        assert (await stack.wait_for(job_id, "succeeded"))["attempts"] == 1


async def test_bulk_filters_are_validated(stack: Stack) -> None:
    admin = stack.headers(stack.admin_token)
    for body, field in [
        ({}, "body"),
        ({"status": ["succeeded"]}, "status"),
        ({"status": ["nope"]}, "status.0"),
        ({"owner": "nobody@example.com"}, "owner"),
        ({"queue": ["system"], "limit": 0}, "limit"),
        ({"queue": ["system"], "created_after": "yesterday"}, "created_after"),
        ({"queue": ["system"], "colour": "red"}, "colour"),
        # Not a database outage: psycopg takes at most 65,535 parameters.
        ({"type": [f"t{i}" for i in range(70_000)]}, "type"),
        ({"queue": ["q"] * 101}, "queue"),
    ]:
        response = await stack.client.post("/v1/jobs/cancel", json=body, headers=admin)
        problem = await response.json()
        assert response.status == 422, (body, problem)
        assert problem["errors"][0]["field"] == field, (body, problem)


async def test_purge_cancels_the_waiting_jobs_of_a_queue(stack: Stack) -> None:
    stack.stop_worker()
    ids = [(await stack.submit("system.echo", {"i": i}))["id"] for i in range(3)]
    response = await stack.client.post(
        "/v1/queues/system/purge", headers=stack.headers(stack.admin_token)
    )
    body = await response.json()
    assert response.status == 200, body
    assert (body["count"], body["more"]) == (3, False)
    stack.start_worker()
    probe = await stack.submit("system.echo", {"after": "purge"})
    await stack.wait_for(probe["id"], "succeeded")  # the purged messages were consumed first
    for job_id in ids:
        job = await stack.get(job_id)
        assert job["status"] == "cancelled" and job["attempts"] == 0


async def test_a_purge_is_bounded_by_its_limit(stack: Stack) -> None:
    stack.stop_worker()
    for i in range(3):
        await stack.submit("system.echo", {"i": i})
    admin = stack.headers(stack.admin_token)
    answers = []
    for _ in range(2):
        response = await stack.client.post("/v1/queues/system/purge?limit=2", headers=admin)
        assert response.status == 200
        answers.append(await response.json())
    assert answers == [
        {"count": 2, "more": True, "cancel_requested": 0, "skipped": 0},
        {"count": 1, "more": False, "cancel_requested": 0, "skipped": 0},
    ]
    for limit in ("0", "10001", "many", "-1"):
        response = await stack.client.post(f"/v1/queues/system/purge?limit={limit}", headers=admin)
        problem = await response.json()
        assert response.status == 422, (limit, problem)
        assert problem["errors"][0]["field"] == "limit", (limit, problem)
    stack.start_worker()


async def test_a_deactivated_user_cannot_use_their_tokens(stack: Stack) -> None:
    from conveyor.services.users import get_by_email, update

    other = get_by_email(stack.db, "other@example.com")
    update(stack.db, None, other.id, active=False)  # before this process cached the user
    response = await stack.client.get("/v1/jobs", headers=stack.headers(stack.other_token))
    assert response.status == 401
    assert "deactivated" in (await response.json())["detail"]
