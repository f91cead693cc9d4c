"""Conveyor's internal job types (the auth pool's emails and purge, a notification's
delivery): services submit them, the API neither takes nor lists them, and the auth pool's
jobs belong to the system account, not to the user they concern."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, update

from conveyor.models import Job, JobStatus, User
from conveyor.registry import JOBS
from conveyor.services import accounts
from conveyor.services.submissions import insert_jobs
from tests.stack import Stack
from tests.unit.http.test_errors import fields, problem

INTERNAL = [
    "auth.send_notice",
    "auth.send_password_reset",
    "auth.send_verification",
    "auth.purge_expired",
    "notifications.deliver",
]


def test_the_auth_jobs_and_deliveries_are_internal(embedded_stack: Stack) -> None:
    assert [name for name in INTERNAL if JOBS.get(name).internal] == INTERNAL


@pytest.mark.parametrize("job_type", INTERNAL)
async def test_submitting_an_internal_type_is_an_unknown_type(
    embedded_stack: Stack, job_type: str
) -> None:
    stack = embedded_stack
    payload = {"user_id": str(uuid.uuid4()), "kind": "password_changed", "context": {}}
    response = await stack.client.post(
        "/v1/jobs", json={"type": job_type, "payload": payload}, headers=stack.headers()
    )
    body = await problem(response, 422)
    assert fields(body) == ["type"]
    assert body["errors"][0]["message"].startswith("unknown job type")
    text = str(body)  # the detail names the type asked for, and no other internal one
    assert not [name for name in INTERNAL if name != job_type and name in text]
    with stack.db() as session:
        assert session.scalar(select(Job.id).where(Job.type == job_type)) is None


async def test_job_types_and_openapi_leave_internal_types_out(embedded_stack: Stack) -> None:
    stack = embedded_stack
    listed = await (await stack.client.get("/v1/job-types", headers=stack.headers())).json()
    names = {t["name"] for t in listed["items"]}
    assert "system.echo" in names
    assert names.isdisjoint(INTERNAL)
    document = await (await stack.client.get("/openapi.json")).json()
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    titles = {variant["title"] for variant in body["schema"]["oneOf"]}
    assert "system.echo" in titles
    assert titles.isdisjoint(INTERNAL)


def _failed_delivery_of(stack: Stack, email: str) -> uuid.UUID:
    """A failed `notifications.deliver` job owned by the user of `email`."""
    submissions = stack.container.submissions
    with stack.db.begin() as session:
        owner = session.scalar(select(User.id).where(User.email == email))
        assert owner is not None
        new = submissions.build(
            "notifications.deliver", {"delivery_id": str(uuid.uuid4())}, owner_id=owner
        )
        job = insert_jobs(session, [new])[0]
        session.execute(update(Job).where(Job.id == job.id).values(status=JobStatus.FAILED.value))
    return job.id


async def test_the_owner_retries_an_internal_job_with_the_payload_conveyor_gave_it(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    job_id = _failed_delivery_of(stack, "member@example.com")
    before = stack.row(str(job_id)).payload
    retried = await stack.client.post(f"/v1/jobs/{job_id}/retry", headers=stack.headers())
    assert retried.status == 202, await retried.text()
    assert stack.row(str(job_id)).payload == before


async def test_a_members_security_notices_are_not_their_jobs(embedded_stack: Stack) -> None:
    stack = embedded_stack
    submissions = stack.container.submissions
    with stack.db.begin() as session:
        member = session.scalar(select(User).where(User.email == "member@example.com"))
        assert member is not None
        notice = accounts.queue_notice(session, submissions, member.id, "password_changed", {})
    assert notice.owner_id != member.id
    with stack.db() as session:
        owner = session.get(User, notice.owner_id)
        assert owner is not None and owner.email == accounts.SYSTEM_EMAIL
    assert not owner.active
    seen = await stack.client.get(f"/v1/jobs/{notice.id}", headers=stack.headers())
    await problem(seen, 404)
    cancel = await stack.client.post(f"/v1/jobs/{notice.id}/cancel", headers=stack.headers())
    await problem(cancel, 404)
    listed = await (await stack.client.get("/v1/jobs", headers=stack.headers())).json()
    assert str(notice.id) not in {job["id"] for job in listed["items"]}
