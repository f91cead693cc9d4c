"""Error groups over HTTP, on the real stack: an operator lists them, retries a group whose
jobs then run again, and discards one; both are in the audit log."""

from __future__ import annotations

import html
import re
import uuid

import pytest
from sqlalchemy import select, update

from conveyor.db import transaction
from conveyor.models import AuditEvent, Job
from conveyor.models.job import jobs_t
from conveyor.services import submissions
from conveyor.services.submissions import NewJob
from conveyor.services.users import get_by_email
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


def _failed(stack: Stack, n: int, job_type: str = "system.fail") -> list[uuid.UUID]:
    """`n` failed jobs of `job_type`, with a TimeoutError, failed as they were made."""
    owner = get_by_email(stack.db, "member@example.com")
    ids = []
    for _ in range(n):
        job, _ = submissions.write(
            stack.db, NewJob(job_type, "system", {"failures": 0}, 3, owner.id)
        )
        ids.append(job.id)
    error = {"type": "TimeoutError", "message": "the warehouse did not answer"}
    with transaction(stack.db) as session:
        session.execute(
            update(jobs_t)
            .where(jobs_t.c.id.in_(ids))
            .values(
                status="failed",
                error=error,
                error_type="TimeoutError",
                finished_at=jobs_t.c.created_at,
            )
        )
    return ids


async def test_a_group_of_a_job_type_this_server_does_not_know_cannot_be_retried(
    stack: Stack,
) -> None:
    ids = _failed(stack, 3, "removed.report")
    admin = stack.headers(stack.admin_token)
    group = {"type": "removed.report", "error_type": "TimeoutError"}

    response = await stack.client.post("/v1/errors/retry", json=group, headers=admin)
    problem = await response.json()
    assert response.status == 409, problem
    assert response.content_type == "application/problem+json"
    assert "removed.report" in problem["detail"]
    # The group's page offers no retry, and says why; its jobs may still be discarded.
    response = await stack.client.get("/admin/errors/group", params=group, headers=admin)
    page = html.unescape(await response.text())
    assert response.status == 200, page
    assert "does not know the job type" in page
    assert 'action="/admin/errors/group/retry"' not in page
    assert "/admin/errors/group/discard?" in page
    response = await stack.client.post("/admin/errors/group/retry", data=group, headers=admin)
    assert response.status == 409
    with stack.db() as session:
        rows = session.scalars(select(Job).where(Job.id.in_(ids))).all()
    assert {job.status for job in rows} == {"failed"}
    assert _actions(stack) == []


async def test_a_group_action_leaves_the_jobs_that_failed_after_the_page_was_shown(
    stack: Stack,
) -> None:
    admin = stack.headers(stack.admin_token)
    group = {"type": "system.fail", "error_type": "TimeoutError"}
    shown = _failed(stack, 2)
    response = await stack.client.get("/admin/errors/group/discard", params=group, headers=admin)
    page = html.unescape(await response.text())
    assert response.status == 200, page
    up_to = re.search(r'name="up_to" value="([^"]+)"', page)
    assert up_to is not None
    later = _failed(stack, 1)  # failed while the operator read the confirmation

    form = {**group, "up_to": up_to.group(1)}
    response = await stack.client.post(
        "/admin/errors/group/discard", data=form, headers=admin, allow_redirects=False
    )
    assert response.status == 303
    with stack.db() as session:
        left = set(session.scalars(select(Job.id).where(Job.id.in_([*shown, *later]))))
    assert left == set(later)

    # The API takes the group's `last_seen` as read, the same way.
    [listed] = await _groups(stack)
    newer = _failed(stack, 1)
    body = {**group, "up_to": listed["last_seen"]}
    response = await stack.client.post("/v1/errors/retry", json=body, headers=admin)
    done = await response.json()
    assert response.status == 200, done
    assert done["count"] == 1
    await stack.wait_for(str(later[0]), "succeeded")  # retried, it runs again
    assert stack.row(str(newer[0])).status == "failed"
    for bad in ("yesterday", "2026-12-02T12:00:00"):  # not a time; no offset
        response = await stack.client.post(
            "/admin/errors/group/retry", data={**group, "up_to": bad}, headers=admin
        )
        assert response.status == 422, bad
