"""The admin's job pages: the list with its filters and pages, a job's page with its history,
traceback and children, and its retry and cancel buttons (audited)."""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from typing import Any

from sqlalchemy import select

import tests.jobs  # noqa: F401  (test-only job types)
from conveyor.models import AuditEvent, Job, JobStatus
from conveyor.models.base import utcnow
from conveyor.services import admin_jobs
from conveyor.services.users import get_by_email
from tests.stack import Stack
from tests.unit.http.admin_pages import admin_get, html_of

NOW = utcnow()


def _id_at(moment: dt.datetime) -> uuid.UUID:
    """A UUIDv7 of `moment`, as a job made then would have."""
    random = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    return uuid.UUID(int=admin_jobs.id_at(moment).int | random)


def _add(
    stack: Stack, n: int = 1, *, owner: str = "member@example.com", **values: Any
) -> list[str]:
    """`n` job rows made directly (a status, an error and a creation time the test picks);
    their ids, oldest first. The worker is stopped first, so that none of them runs."""
    stack.stop_worker()
    owner_id = get_by_email(stack.db, owner).id
    created = values.pop("created_at", NOW)
    ids = []
    with stack.db() as session:
        for i in range(n):
            at = created + dt.timedelta(milliseconds=i)
            job = Job(
                id=_id_at(at),
                type=values.get("type", "system.echo"),
                queue=values.get("queue", "system"),
                status=values.get("status", JobStatus.SUCCEEDED.value),
                payload={},
                owner_id=owner_id,
                created_at=at,
                updated_at=at,
                error=values.get("error"),
                attempts=1,
            )
            session.add(job)
            ids.append(str(job.id))
        session.commit()
    return ids


def _listed(text: str) -> set[str]:
    """The ids of the jobs a list page shows."""
    return set(re.findall(r'href="/admin/jobs/([0-9a-f-]{36})"', text))


# --- the list ------------------------------------------------------------------------------


async def test_the_list_shows_the_newest_jobs_with_their_facts(embedded_stack: Stack) -> None:
    stack = embedded_stack
    old = _add(stack, created_at=NOW - dt.timedelta(hours=2))
    new = _add(stack, status="failed", error={"type": "ValueError", "message": "bad input"})
    text = await admin_get(stack, "/admin/jobs")
    assert text.index(new[0]) < text.index(old[0])  # newest first
    assert 'class="status status-failed"' in text
    assert "ValueError: bad input" in text
    assert "member@example.com" in text
    assert 'aria-current="page"' in text and "Attempts</th>" in text


async def test_each_filter_keeps_only_the_jobs_that_match(embedded_stack: Stack) -> None:
    stack = embedded_stack
    failed = _add(stack, status="failed", error={"type": "KeyError", "message": "no 'sku'"})
    retrying = _add(stack, status="retrying", error={"type": "TimeoutError", "message": "slow"})
    queued = _add(stack, status="queued", type="testing.busy")
    other = _add(stack, owner="other@example.com", type="notifications.deliver", queue="x")
    older = _add(stack, created_at=NOW - dt.timedelta(days=3))
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"status": "failed"}, {*failed}),
        ({"status": ["failed", "retrying"]}, {*failed, *retrying}),
        ({"status": "failed,queued"}, {*failed, *queued}),
        ({"type": "testing.busy"}, {*queued}),
        ({"queue": "x"}, {*other}),
        ({"owner": "other@example.com"}, {*other}),
        ({"created_to": (NOW - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")}, {*older}),
        (
            {
                "created_from": (NOW - dt.timedelta(days=4)).strftime("%Y-%m-%dT%H:%M"),
                "created_to": (NOW - dt.timedelta(days=2)).isoformat(),
            },
            {*older},
        ),
        ({"error": "sku"}, {*failed}),
        ({"error": "timeouterror"}, {*retrying}),  # the error's type, in any case
        ({"error": "slow", "status": "failed"}, set()),
    ]
    for params, expected in cases:
        text = await admin_get(stack, "/admin/jobs", **params)
        assert _listed(text) == expected, params


async def test_a_queue_is_found_through_the_types_that_run_on_it(embedded_stack: Stack) -> None:
    stack = embedded_stack
    system = _add(stack, type="testing.busy", queue="system")
    _add(stack, type="auth.send_email", queue="auth")
    text = await admin_get(stack, "/admin/jobs", queue="system")
    assert _listed(text) == {*system}


async def test_the_list_is_paged_by_the_id_of_the_last_job(embedded_stack: Stack) -> None:
    stack = embedded_stack
    ids = _add(stack, 5)
    text = await admin_get(
        stack, "/admin/jobs", limit="2", type="system.echo", status=["succeeded", "failed"]
    )
    assert _listed(text) == set(ids[3:])
    seen = _listed(text)
    while 'rel="next"' in text:
        href = re.search(r'<a href="([^"]+)" rel="next">', text)
        assert href is not None
        assert "type=system.echo" in href.group(1)  # the filters stay, repeated ones too
        assert "status=succeeded&status=failed" in href.group(1)
        text = await admin_get(stack, href.group(1))
        assert not seen & _listed(text)
        seen |= _listed(text)
    assert seen == set(ids)
    assert "Newest" in text


async def test_an_error_search_says_how_far_it_looked(
    embedded_stack: Stack, monkeypatch: Any
) -> None:
    stack = embedded_stack
    monkeypatch.setattr(admin_jobs, "SCAN_WINDOW", 3)
    match = _add(stack, status="failed", error={"type": "E", "message": "needle"})
    _add(
        stack,
        3,
        status="failed",
        error={"type": "E", "message": "hay"},
        created_at=NOW + dt.timedelta(seconds=1),
    )
    text = await admin_get(stack, "/admin/jobs", error="needle")
    assert _listed(text) == set()
    assert "among the 3 newest jobs with an error" in text
    href = re.search(r'<a href="([^"]+)" rel="next">', text)
    assert href is not None
    text = await admin_get(stack, href.group(1))
    assert _listed(text) == {*match}
    assert 'rel="next"' not in text


async def test_bad_filters_answer_422_naming_the_field(embedded_stack: Stack) -> None:
    stack = embedded_stack
    cases = {
        "status": {"status": "lost"},
        "owner": {"owner": "nobody@example.com"},
        "created_from": {"created_from": "yesterday"},
        "created_to": {"created_from": "2026-12-02T10:00", "created_to": "2026-12-01"},
        "before": {"before": "not-a-uuid"},
        "parent": {"parent": "123"},
        "limit": {"limit": "201"},
        "error": {"error": "boom", "status": "succeeded"},
    }
    for field, params in cases.items():
        text = await admin_get(stack, "/admin/jobs", 422, **params)
        assert "422" in text and f"{field}:" in text, (field, text)
    text = await admin_get(stack, "/admin/jobs", 422, error="x" * 201)
    assert "error:" in text


async def test_times_at_the_calendar_s_edge_are_422_or_clamped(embedded_stack: Stack) -> None:
    """A time with no UTC equivalent is a 422 naming its field; a time at the first or last
    moment of the calendar finds jobs (the id range's slack stops at the edge)."""
    stack = embedded_stack
    ids = _add(stack)
    for field, value in (
        ("created_from", "0001-01-01T00:00+14:00"),
        ("created_to", "9999-12-31T23:59-14:00"),
    ):
        text = await admin_get(stack, "/admin/jobs", 422, **{field: value})
        assert f"{field}: out of range" in text, text
    for params in (
        {"created_from": "0001-01-01T00:00"},
        {"created_to": "9999-12-31T23:59:59.999999"},
        {"created_from": "1960-01-01T00:00", "created_to": "9999-12-31T23:59"},
    ):
        assert _listed(await admin_get(stack, "/admin/jobs", **params)) == {*ids}, params
    assert _listed(await admin_get(stack, "/admin/jobs", created_to="1969-12-31T23:59")) == set()


async def test_members_may_not_see_the_jobs_pages(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {})
    for url in ("/admin/jobs", f"/admin/jobs/{job['id']}", f"/admin/jobs/{job['id']}/live"):
        response = await stack.client.get(url, headers=stack.headers())
        await html_of(response, 403)
    for action in ("retry", "cancel"):
        response = await stack.client.post(
            f"/admin/jobs/{job['id']}/{action}", headers=stack.headers()
        )
        await html_of(response, 403)


# --- one job -------------------------------------------------------------------------------


async def test_a_failed_job_s_page_shows_its_error_traceback_and_every_event(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    job = await stack.submit("testing.explode", {"message": "kaboom"})
    await stack.wait_for(job["id"], "failed")
    text = await admin_get(stack, f"/admin/jobs/{job['id']}")
    assert "RuntimeError" in text and "the helper failed" in text
    assert "Traceback (most recent call last)" in text and "_explode_here" in text
    assert 'ol class="timeline"' in text
    for status in ("queued", "running", "retrying", "failed"):
        assert f'class="status status-{status}"' in text, status
    assert "data-refresh-stop" in text  # finished: the live part stops
    assert "Retry this job" in text and "Cancel this job" not in text
    assert 'href="/admin/errors/group?type=testing.explode&error_type=RuntimeError"' in text
    assert '"message": "kaboom"' in text  # the payload
    assert "member@example.com" in text


async def test_the_timeline_is_paged_when_long(embedded_stack: Stack, monkeypatch: Any) -> None:
    stack = embedded_stack
    monkeypatch.setattr(admin_jobs, "EVENTS_PAGE", 2)
    job = await stack.submit("system.echo", {})
    await stack.wait_for(job["id"], "succeeded")
    text = await admin_get(stack, f"/admin/jobs/{job['id']}")
    assert text.count("attempt ") == 2
    href = re.search(r'href="(/admin/jobs/[^"]+\?events_after=\d+)">Later events', text)
    assert href is not None
    text = await admin_get(stack, href.group(1))
    assert "First events" in text
    assert 'class="status status-succeeded"' in text
    for bad in ("-1", "x", "9" * 40):
        await admin_get(stack, f"/admin/jobs/{job['id']}", 422, events_after=bad)


async def test_a_job_s_page_links_its_parent_and_children(embedded_stack: Stack) -> None:
    stack = embedded_stack
    parent = await stack.submit("testing.spawn", {"n": 7})
    done = await stack.wait_for(parent["id"], "succeeded")
    child = done["result"]["child"]
    text = await admin_get(stack, f"/admin/jobs/{parent['id']}")
    assert f'href="/admin/jobs/{child}"' in text
    assert '"child":' in text  # the result
    text = await admin_get(stack, f"/admin/jobs/{child}")
    assert f'href="/admin/jobs/{parent["id"]}"' in text
    assert "This job submitted no other job." in text
    text = await admin_get(stack, "/admin/jobs", parent=parent["id"])
    assert _listed(text) == {child, parent["id"]}  # the child, and the parent in the notice


async def test_an_unknown_job_is_not_found(embedded_stack: Stack) -> None:
    stack = embedded_stack
    await admin_get(stack, f"/admin/jobs/{uuid.uuid4()}", 404)
    await admin_get(stack, "/admin/jobs/not-an-id", 404)


async def test_the_live_part_refreshes_until_the_job_finishes(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.sleep", {"seconds": 30, "steps": 30})
    await stack.wait_for(job["id"], "running")
    text = await admin_get(stack, f"/admin/jobs/{job['id']}")
    assert f'data-refresh="/admin/jobs/{job["id"]}/live"' in text
    live = await admin_get(stack, f"/admin/jobs/{job['id']}/live")
    assert not live.startswith("<!doctype html>")
    assert "data-refresh-stop" not in live
    assert "Ask its worker to stop it" in live
    response = await stack.client.post(
        f"/admin/jobs/{job['id']}/cancel",
        headers=stack.headers(stack.admin_token),
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == f"/admin/jobs/{job['id']}?done=stopping"
    await stack.wait_for(job["id"], "cancelled")
    live = await admin_get(stack, f"/admin/jobs/{job['id']}/live")
    assert "data-refresh-stop" in live


# --- actions -------------------------------------------------------------------------------


def _audit(stack: Stack, action: str) -> list[AuditEvent]:
    with stack.db() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


async def test_retry_queues_the_job_again_and_is_audited(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("testing.explode", {})
    await stack.wait_for(job["id"], "failed")
    response = await stack.client.post(
        f"/admin/jobs/{job['id']}/retry", headers=stack.headers(stack.admin_token)
    )
    text = await html_of(response)  # followed: back to the job's page
    assert str(response.url).endswith(f"/admin/jobs/{job['id']}?done=retried")
    assert "The job was queued again." in text
    assert stack.row(job["id"]).attempts >= 2 or stack.row(job["id"]).status != "failed"
    [event] = _audit(stack, "job_retried")
    assert event.details["job_id"] == job["id"]
    assert event.subject_id == get_by_email(stack.db, "member@example.com").id
    assert event.actor_id == get_by_email(stack.db, "admin@example.com").id
    # A job that is not failed or cancelled: 409, as a page.
    await stack.wait_for(job["id"], "failed")
    done = await stack.submit("system.echo", {})
    await stack.wait_for(done["id"], "succeeded")
    response = await stack.client.post(
        f"/admin/jobs/{done['id']}/retry", headers=stack.headers(stack.admin_token)
    )
    await html_of(response, 409)


async def test_cancel_ends_a_waiting_job_and_is_audited(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.post(
        "/v1/jobs",
        json={"type": "system.echo", "payload": {}, "delay_seconds": 3600},
        headers=stack.headers(),
    )
    job = await response.json()
    assert job["status"] == "scheduled", job
    text = await admin_get(stack, f"/admin/jobs/{job['id']}")
    assert "Cancel this job" in text
    response = await stack.client.post(
        f"/admin/jobs/{job['id']}/cancel", headers=stack.headers(stack.admin_token)
    )
    text = await html_of(response)
    assert "The job was cancelled." in text
    assert stack.row(job["id"]).status == "cancelled"
    [event] = _audit(stack, "job_cancelled")
    assert event.details == {
        "job_id": job["id"],
        "job_type": "system.echo",
        "stopping": False,
    }
    assert "Retry this job" in text
