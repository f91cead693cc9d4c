"""Error groups over HTTP, on the real stack: an operator lists them, retries a group whose
jobs then run again, and discards one; both are in the audit log."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from conveyor.models import AuditEvent, Job
from tests.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("broker_kind", ["rabbitmq"])]


async def _groups(stack: Stack) -> list[dict[str, object]]:
    response = await stack.client.get("/v1/errors", headers=stack.headers(stack.admin_token))
    body = await response.json()
    assert response.status == 200, body
    return body["items"]  # type: ignore[no-any-return]


def _actions(stack: Stack) -> list[tuple[str, int]]:
    with stack.db() as session:
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action.like("error_group_%"))
            .order_by(AuditEvent.id)
        )
        return [(e.action, e.details["count"]) for e in events]


async def test_a_retried_group_runs_again_and_succeeds(stack: Stack) -> None:
    # Four failures spend one run and three retries; the fifth attempt succeeds.
    jobs = [await stack.submit("system.fail", {"failures": 4}) for _ in range(2)]
    for job in jobs:
        await stack.wait_for(job["id"], "failed")
    [group] = await _groups(stack)
    assert (group["type"], group["error_type"], group["count"]) == (
        "system.fail",
        "RuntimeError",
        2,
    )
    assert group["sample_job_id"] in {job["id"] for job in jobs}

    response = await stack.client.post(
        "/v1/errors/retry",
        json={"type": "system.fail", "error_type": "RuntimeError"},
        headers=stack.headers(stack.admin_token),
    )
    body = await response.json()
    assert response.status == 200, body
    assert (body["count"], body["more"]) == (2, False)

    for job in jobs:
        done = await stack.wait_for(job["id"], "succeeded")
        assert done["attempts"] == 5
    assert await _groups(stack) == []
    assert _actions(stack) == [("error_group_retried", 2)]


async def test_a_discarded_group_is_gone(stack: Stack) -> None:
    job = await stack.submit("system.fail", {"failures": 10})
    await stack.wait_for(job["id"], "failed")

    response = await stack.client.post(
        "/v1/errors/discard",
        json={"type": "system.fail", "error_type": "RuntimeError", "limit": 10},
        headers=stack.headers(stack.admin_token),
    )
    body = await response.json()
    assert response.status == 200, body
    assert body["count"] == 1
    with stack.db() as session:
        assert session.get(Job, uuid.UUID(job["id"])) is None
    response = await stack.client.get(f"/v1/jobs/{job['id']}", headers=stack.headers())
    assert response.status == 404
    assert _actions(stack) == [("error_group_discarded", 1)]


async def test_group_actions_are_for_operators_and_check_their_body(stack: Stack) -> None:
    for path in ("/v1/errors/retry", "/v1/errors/discard"):
        body = {"type": "system.fail", "error_type": None}
        response = await stack.client.post(path, json=body, headers=stack.headers())
        assert response.status == 403, path
        response = await stack.client.post(
            path, json={"error_type": "X"}, headers=stack.headers(stack.admin_token)
        )
        problem = await response.json()
        assert response.status == 422, problem
        assert [e["field"] for e in problem["errors"]] == ["type"]
    response = await stack.client.get("/v1/errors", headers=stack.headers())
    assert response.status == 403
