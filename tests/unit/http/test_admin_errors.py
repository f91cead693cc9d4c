"""The admin's errors pages: failures grouped by job type and error type, a group's page with
its sample traceback and jobs, and retrying or discarding a whole group (audited)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

import tests.jobs  # noqa: F401  (test-only job types)
from conveyor.models import AuditEvent
from tests.stack import Stack
from tests.unit.http.admin_pages import admin_get, admin_post, html_of

GROUP = "/admin/errors/group"


async def _failures(stack: Stack) -> tuple[list[str], str]:
    """Two failed `testing.explode` jobs (RuntimeError) and one `testing.decline`
    (CardDeclinedError)."""
    exploded = [(await stack.submit("testing.explode", {"message": f"m{i}"}))["id"] for i in (1, 2)]
    declined = (await stack.submit("testing.decline", {}))["id"]
    for job_id in [*exploded, declined]:
        await stack.wait_for(job_id, "failed")
    return exploded, declined


def _listed(text: str, ids: list[str]) -> list[str]:
    """Which of `ids` the table of a group's jobs lists (not the sample above it)."""
    table = text.partition("<h2>Jobs</h2>")[2]
    return [job_id for job_id in ids if f'href="/admin/jobs/{job_id}"' in table]


def _audit(stack: Stack, action: str) -> list[AuditEvent]:
    with stack.db() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


async def test_the_errors_page_groups_failures_by_type_and_error(embedded_stack: Stack) -> None:
    stack = embedded_stack
    await _failures(stack)
    text = await admin_get(stack, "/admin/errors")
    assert "testing.explode" in text and "RuntimeError" in text
    assert "testing.decline" in text and "CardDeclinedError" in text
    assert f'href="{GROUP}?type=testing.explode&error_type=RuntimeError"' in text
    assert "the helper failed" in text  # the sample's message
    row = text[text.index("testing.explode") :]
    assert '<td class="num">2</td>' in row[: row.index("</tr>")]


async def test_no_failures_say_what_will_appear(embedded_stack: Stack) -> None:
    text = await admin_get(embedded_stack, "/admin/errors")
    assert "No failed jobs" in text


async def test_a_group_s_page_shows_its_traceback_and_jobs(embedded_stack: Stack) -> None:
    stack = embedded_stack
    exploded, _declined = await _failures(stack)
    text = await admin_get(stack, GROUP, type="testing.explode", error_type="RuntimeError")
    assert "Traceback (most recent call last)" in text and "_explode_here" in text
    assert sorted(_listed(text, exploded)) == sorted(exploded)
    assert "Retry all 2 jobs" in text
    assert f'href="{GROUP}/discard?type=testing.explode&error_type=RuntimeError"' in text
    await admin_get(stack, GROUP, 404, type="testing.explode", error_type="KeyError")
    await admin_get(stack, GROUP, 422)
    await admin_get(stack, GROUP, 422, type="testing.explode", after="nope")
    await admin_get(stack, GROUP, 422, type="x" * 201)
    await admin_post(stack, f"{GROUP}/retry", {"error_type": "RuntimeError"}, 422)
    await admin_post(stack, f"{GROUP}/discard", {}, 422)


async def test_a_group_s_jobs_are_paged(embedded_stack: Stack, monkeypatch: Any) -> None:
    from conveyor.http.admin import errors

    stack = embedded_stack
    monkeypatch.setattr(errors, "JOBS_PER_PAGE", 1)
    exploded, _declined = await _failures(stack)
    text = await admin_get(stack, GROUP, type="testing.explode", error_type="RuntimeError")
    seen = _listed(text, exploded)
    assert len(seen) == 1
    start = text.index(f"{GROUP}?type=testing.explode&error_type=RuntimeError&after=")
    text = await admin_get(stack, text[start : text.index('"', start)])
    assert _listed(text, exploded) == [job_id for job_id in exploded if job_id not in seen]
    assert "Most recent" in text


async def test_retrying_a_group_queues_its_jobs_again(embedded_stack: Stack) -> None:
    stack = embedded_stack
    exploded, declined = await _failures(stack)
    text = await admin_post(
        stack, f"{GROUP}/retry", {"type": "testing.explode", "error_type": "RuntimeError"}
    )
    assert "The group's jobs were queued again." in text  # on the errors page
    for job_id in exploded:
        assert stack.row(job_id).attempts > 2 or stack.row(job_id).status != "failed"
    assert stack.row(declined).status == "failed"  # another group
    [event] = _audit(stack, "error_group_retried")
    assert event.details["job_type"] == "testing.explode"
    assert event.details["count"] == 2


async def test_discarding_a_group_asks_first_then_deletes_its_jobs(embedded_stack: Stack) -> None:
    stack = embedded_stack
    exploded, declined = await _failures(stack)
    text = await admin_get(
        stack, f"{GROUP}/discard", type="testing.decline", error_type="CardDeclinedError"
    )
    assert "deletes the 1 failed job of <strong>testing.decline</strong>" in text
    assert 'action="/admin/errors/group/discard"' in text
    assert stack.row(declined).status == "failed"  # asking deleted nothing
    text = await admin_post(
        stack,
        f"{GROUP}/discard",
        {"type": "testing.decline", "error_type": "CardDeclinedError"},
    )
    assert "The group's jobs were deleted." in text
    assert "CardDeclinedError" not in text.partition("<main")[2]
    response = await stack.client.get(
        f"/v1/jobs/{declined}", headers=stack.headers(stack.admin_token)
    )
    assert response.status == 404
    assert stack.row(exploded[0]).status == "failed"
    [event] = _audit(stack, "error_group_discarded")
    assert event.details["count"] == 1


async def test_members_may_not_see_or_act_on_error_groups(embedded_stack: Stack) -> None:
    stack = embedded_stack
    for url in ("/admin/errors", GROUP, f"{GROUP}/discard"):
        response = await stack.client.get(url, headers=stack.headers())
        await html_of(response, 403)
    for url in (f"{GROUP}/retry", f"{GROUP}/discard"):
        response = await stack.client.post(
            url, data={"type": "testing.explode"}, headers=stack.headers()
        )
        await html_of(response, 403)
