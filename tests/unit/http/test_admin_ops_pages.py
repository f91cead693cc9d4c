"""The operators' pages: the overview, the queues (and purging one), the workers and the
notifications pool; each with data, its live part alone, its actions audited, and its
refusals (403 for members, 404 for an unknown queue, 422 for bad parameters)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from aiohttp import ClientResponse
from sqlalchemy import select, update

from conveyor.db import transaction
from conveyor.http.admin.overview import HEIGHT, chart
from conveyor.models import AuditEvent, Delivery, Notification
from conveyor.models.base import utcnow
from conveyor.models.job import jobs_t
from conveyor.models.worker import workers_t
from conveyor.services import workers
from conveyor.services.users import get_by_email
from conveyor.services.workers import WorkerProcess
from tests.stack import Stack

PAGES = ["/admin/", "/admin/queues", "/admin/workers", "/admin/notifications"]
FRAGMENTS = ["/admin/overview/live", "/admin/queues/live", "/admin/workers/live"]


async def _page(response: ClientResponse, status: int = 200) -> str:
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"].startswith("text/html")
    return text


async def _get(stack: Stack, path: str, status: int = 200, token: str | None = None) -> str:
    headers = stack.headers(token or stack.admin_token)
    return await _page(await stack.client.get(path, headers=headers), status)


def _beat(stack: Stack, id_: str, pool: str, *, silent_for: float = 0.0, in_hand: int = 0) -> None:
    process = WorkerProcess(
        id=id_,
        pool=pool,
        host=f"host-{id_}",
        pid=4000 + len(id_),
        queues=[pool],
        threads=6,
        started_at=utcnow() - dt.timedelta(minutes=5),
    )
    workers.beat(stack.db, process, in_hand)
    if silent_for:
        with transaction(stack.db) as session:
            session.execute(
                update(workers_t)
                .where(workers_t.c.id == id_)
                .values(last_heartbeat_at=utcnow() - dt.timedelta(seconds=silent_for))
            )


async def _waiting_jobs(stack: Stack, n: int, *, delay: int | None = None) -> list[str]:
    """`n` jobs of the `system` queue that no worker takes: the worker is stopped."""
    stack.stop_worker()
    ids = []
    for _ in range(n):
        body: dict[str, object] = {"type": "system.echo", "payload": {}}
        if delay is not None:
            body["delay_seconds"] = delay
        response = await stack.client.post("/v1/jobs", json=body, headers=stack.headers())
        assert response.status == 202, await response.text()
        ids.append((await response.json())["id"])
    return ids


# --- the chart ------------------------------------------------------------------------------


@dataclass(frozen=True)
class M:
    at: dt.datetime
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


def _series(counts: Sequence[tuple[int, int, int]]) -> list[M]:
    start = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    return [M(start + dt.timedelta(minutes=i), *c) for i, c in enumerate(counts)]


def test_the_chart_stacks_each_minute_s_outcomes_scaled_to_the_busiest() -> None:
    drawn = chart(_series([(0, 0, 0), (6, 2, 2), (3, 1, 0)]))
    assert drawn.peak == 10
    assert drawn.totals == {"succeeded": 9, "failed": 3, "cancelled": 2}
    empty, busiest, third = drawn.bars
    assert empty.segments == []
    heights = {s.outcome: s.height for s in busiest.segments}
    assert heights == {"succeeded": 60.0, "failed": 20.0, "cancelled": 20.0}
    # Stacked from the bottom: succeeded lowest, each segment right on top of the one below.
    assert busiest.segments[0].y + busiest.segments[0].height == HEIGHT
    assert busiest.segments[1].y + busiest.segments[1].height == busiest.segments[0].y
    assert busiest.segments[2].y == 0
    assert sum(s.height for s in third.segments) == pytest.approx(40.0)
    assert third.x > busiest.x > empty.x
    assert busiest.label == "12:01 UTC: 6 succeeded, 2 failed, 2 cancelled"
    assert "14 jobs finished: 9 succeeded, 3 failed, 2 cancelled" in drawn.summary
    assert "12:01 UTC, saw 10" in drawn.summary


def test_a_quiet_hour_says_so_and_draws_empty_bars() -> None:
    drawn = chart(_series([(0, 0, 0)] * 60))
    assert len(drawn.bars) == 60
    assert all(not b.segments for b in drawn.bars)
    assert drawn.summary == "No job finished in the last 60 minutes."


# --- the pages --------------------------------------------------------------------------------


async def test_the_overview_shows_queues_and_the_workers_alive_per_pool(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    await _waiting_jobs(stack, 3)
    _beat(stack, "a", "system")
    _beat(stack, "b", "system")
    _beat(stack, "c", "reports")
    _beat(stack, "dead", "auth", silent_for=3600)
    text = await _get(stack, "/admin/")
    assert "<h1>Overview</h1>" in text
    assert 'data-refresh="/admin/overview/live"' in text
    assert 'aria-current="page">Overview' in text
    assert '<a href="/admin/queues#queue-system">system</a>' in text
    assert '<a href="/admin/workers#pool-system">system</a></th><td class="num">2</td>' in text
    assert "pool-auth" not in text  # dead: not alive
    assert "style=" not in text and "<script>" not in text
    fragment = await _get(stack, "/admin/overview/live")
    assert "<html" not in fragment and "<h1>" not in fragment
    assert "Workers alive" in fragment


async def test_the_overview_says_when_no_worker_is_alive(embedded_stack: Stack) -> None:
    embedded_stack.stop_worker()  # the stack's own worker: its clean stop removes its row
    text = await _get(embedded_stack, "/admin/overview/live")
    assert "No worker process has sent a heartbeat" in text


async def test_the_workers_page_lists_live_processes_and_drops_dead_ones(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    stack.stop_worker()  # the stack's own worker: its clean stop removes its row
    _beat(stack, "alive", "reports", in_hand=2)
    _beat(stack, "gone", "auth", silent_for=stack.settings.worker_timeout_seconds + 5)
    text = await _get(stack, "/admin/workers")
    assert 'data-refresh="/admin/workers/live"' in text
    assert "host-alive" in text and "host-gone" not in text
    assert '<tr id="pool-reports">' in text
    assert "1 process alive, 6 threads, 2 jobs in hand" in text
    fragment = await _get(stack, "/admin/workers/live")
    assert "host-alive" in fragment and "<html" not in fragment
    assert 'title="' in fragment and "5 min ago" in fragment  # started five minutes ago


async def test_the_queues_page_shows_each_queue_s_figures(embedded_stack: Stack) -> None:
    stack = embedded_stack
    first, *_ = await _waiting_jobs(stack, 3)
    await _waiting_jobs(stack, 1, delay=600)
    with transaction(stack.db) as session:
        session.execute(
            update(jobs_t)
            .where(jobs_t.c.id == uuid.UUID(first))
            .values(status="failed", finished_at=utcnow())
        )
    text = await _get(stack, "/admin/queues")
    assert 'data-refresh="/admin/queues/live"' in text
    row = text[text.index('<tr id="queue-system">') :]
    row = row[: row.index("</tr>")]
    cells = [c.split(">")[-1] for c in row.split("</td>")[:-1]]
    assert cells[1:5:2] == ["2", "0"] and cells[4] == "1"  # waiting, running, scheduled
    assert '<span class="status status-running">running</span>' in row  # not paused
    assert '<a href="/admin/jobs?status=failed&amp;queue=system">1</a>' in row
    assert 'href="/admin/queues/system/purge"' in row
    fragment = await _get(stack, "/admin/queues/live")
    assert '<tr id="queue-system">' in fragment and "<html" not in fragment


async def test_purging_a_queue_confirms_then_cancels_its_waiting_jobs_and_is_audited(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    waiting = await _waiting_jobs(stack, 2)
    delayed = await _waiting_jobs(stack, 1, delay=600)
    text = await _get(stack, "/admin/queues/system/purge")
    assert "<h1>Purge the queue system</h1>" in text
    assert "cancels its\n2 waiting and 1 scheduled jobs:\n3 in all" in text
    assert '<form method="post" action="/admin/queues/system/purge"' in text
    # Looking changed nothing.
    assert {stack.row(i).status for i in waiting + delayed} == {"queued", "scheduled"}

    response = await stack.client.post(
        "/admin/queues/system/purge",
        headers=stack.headers(stack.admin_token),
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/admin/queues?done=purged&n=3"
    assert {stack.row(i).status for i in waiting + delayed} == {"cancelled"}
    with stack.db() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "queue_purged")).one()
    admin = get_by_email(stack.db, "admin@example.com")
    assert event.actor_id == admin.id
    assert event.details["queue"] == "system"
    assert event.details["cancelled"] == 3
    assert event.details["more"] is False

    page = await _get(stack, "/admin/queues?done=purged&n=3")
    notice = "The queue was purged: 3 waiting jobs were cancelled."
    assert f'<p class="notice" role="status">{notice}' in page


async def test_an_empty_queue_has_nothing_to_purge(embedded_stack: Stack) -> None:
    text = await _get(embedded_stack, "/admin/queues/system/purge")
    assert "Nothing to purge" in text and "<form method" not in text.split("</header>")[1]


async def test_an_unknown_queue_is_not_found(embedded_stack: Stack) -> None:
    stack = embedded_stack
    text = await _get(stack, "/admin/queues/no-such-queue/purge", 404)
    assert "no queue" in text
    response = await stack.client.post(
        "/admin/queues/no-such-queue/purge", headers=stack.headers(stack.admin_token)
    )
    await _page(response, 404)
    with stack.db() as session:
        purges = select(AuditEvent).where(AuditEvent.action == "queue_purged")
        assert session.scalars(purges).all() == []


@pytest.mark.parametrize(
    ("query", "field"),
    [("done=gone", "done"), ("done=purged&n=-1", "n"), ("done=purged&n=abc", "n")],
)
async def test_a_bad_notice_parameter_is_unprocessable(
    embedded_stack: Stack, query: str, field: str
) -> None:
    text = await _get(embedded_stack, f"/admin/queues?{query}", 422)
    assert f"the {field} parameter" in text


async def test_a_queue_name_too_long_is_unprocessable(embedded_stack: Stack) -> None:
    text = await _get(embedded_stack, f"/admin/queues/{'q' * 101}/purge", 422)
    assert "queue" in text


async def test_members_get_none_of_the_pages_nor_the_purge(embedded_stack: Stack) -> None:
    stack = embedded_stack
    ids = await _waiting_jobs(stack, 1)
    for path in [*PAGES, *FRAGMENTS, "/admin/queues/system/purge"]:
        await _get(stack, path, 403, token=stack.member_token)
    response = await stack.client.post("/admin/queues/system/purge", headers=stack.headers())
    await _page(response, 403)
    assert stack.row(ids[0]).status == "queued"


async def test_the_notifications_page_counts_recent_deliveries_and_lists_failures(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    admin = get_by_email(stack.db, "admin@example.com")
    with transaction(stack.db) as session:
        notification = Notification(kind="welcome", owner_id=admin.id, context={})
        session.add(notification)
        session.flush()
        for channel, provider, status, error in [
            ("email", "smtp", "sent", None),
            ("email", "smtp", "sent", None),
            ("email", "smtp", "failed", "550 mailbox <unavailable>"),
            ("webhook", None, "pending", None),
            ("webhook", "http", "sending", None),
        ]:
            session.add(
                Delivery(
                    notification_id=notification.id,
                    channel=channel,
                    address=f"{uuid.uuid4().hex}@example.com",
                    provider=provider,
                    status=status,
                    last_error=error,
                    attempts=1,
                )
            )
    text = await _get(stack, "/admin/notifications")
    assert "5 deliveries created since" in text
    assert "2 sent, 1 failed" in text
    email = text[text.index('<th scope="row">email</th>') :]
    email = email[: email.index("</tr>")]
    assert [c.split(">")[-1] for c in email.split("</td>")[:-1]] == [
        "smtp",
        "2",
        "1",
        "0",
        "0",
        "3",
    ]
    assert "550 mailbox &lt;unavailable&gt;" in text  # escaped
    assert "No failed delivery" not in text


async def test_the_notifications_page_says_when_nothing_was_delivered(
    embedded_stack: Stack,
) -> None:
    text = await _get(embedded_stack, "/admin/notifications")
    assert "No delivery in the last hour." in text
    assert "No failed delivery." in text


@pytest.mark.parametrize("path", ["reports", "schedules", "workflows"])
async def test_the_pages_of_pools_to_come_say_what_will_appear(
    embedded_stack: Stack, path: str
) -> None:
    text = await _get(embedded_stack, f"/admin/{path}")
    assert "Nothing here yet." in text
    assert "appear here once" in text
    assert f'href="/admin/{path}" aria-current="page"' in text


async def test_the_overview_charts_the_jobs_finished_this_hour_by_outcome(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    ids = [(await stack.submit("system.echo", {}))["id"] for _ in range(3)]
    for job_id in ids:
        await stack.wait_for(job_id, "succeeded")
    with transaction(stack.db) as session:  # one of them failed, as far as the chart knows
        session.execute(
            update(jobs_t).where(jobs_t.c.id == uuid.UUID(ids[0])).values(status="failed")
        )
    text = await _get(stack, "/admin/")
    assert "3 jobs finished: 2 succeeded, 1 failed, 0 cancelled" in text
    assert '<svg class="chart"' in text and 'role="img"' in text
    assert text.count('<rect class="slot"') == 60
    assert '<rect class="failed"' in text and '<rect class="succeeded"' in text
    assert "33.3 %" in text  # the failure rate
    assert "<summary>The figures as a table</summary>" in text
    assert text.count('<th scope="row">') >= 60  # a row per minute in the table


async def test_the_queues_page_shows_each_pool_s_desired_workers_and_why(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    await _waiting_jobs(stack, 2)
    _beat(stack, "s1", "system")
    text = await _get(stack, "/admin/queues")
    assert "Capacity per pool" in text
    row = text[text.index('<tr id="pool-system">') :]
    row = row[: row.index("</tr>")]
    cells = [c.split(">")[-1] for c in row.split("</td>")[:-1]]
    # alive, busy threads, threads each, utilization, arrivals, mean run time (none
    # finished), backlog, running, queues
    assert cells[1:] == ["1", "0.0", "6", "0 %", "0.4 /min", "—", "2", "0", "system"]
    assert '<td class="num"><strong>1</strong></td>' in row


def _audited(stack: Stack, action: str) -> list[AuditEvent]:
    with stack.db() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


async def _post(stack: Stack, path: str, token: str | None = None) -> ClientResponse:
    return await stack.client.post(
        path, headers=stack.headers(token or stack.admin_token), allow_redirects=False
    )


async def test_pausing_a_queue_holds_its_jobs_and_resuming_runs_them_both_audited(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    response = await _post(stack, "/admin/queues/system/pause")
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/admin/queues?done=paused"
    job = await stack.submit("system.echo", {})
    text = await _get(stack, "/admin/queues?done=paused")
    assert "The queue was paused: its workers take none of its jobs" in text
    row = text[text.index('<tr id="queue-system">') :]
    row = row[: row.index("</tr>")]
    assert '<span class="status status-paused">paused</span>' in row
    assert 'action="/admin/queues/system/resume"' in row
    assert 'action="/admin/queues/system/pause"' not in row
    assert "1 process, " in row  # the stack's own worker consumes it
    overview = await _get(stack, "/admin/")
    assert 'system</a> <span class="status status-paused">paused</span>' in overview

    again = await _post(stack, "/admin/queues/system/pause")
    assert again.headers["Location"] == "/admin/queues?done=paused_already"
    assert stack.row(job["id"]).status == "queued"  # held while paused

    response = await _post(stack, "/admin/queues/system/resume")
    assert response.status == 303, await response.text()
    location = response.headers["Location"]
    assert location.startswith("/admin/queues?done=resumed&n=")
    await stack.wait_for(job["id"], "succeeded")
    text = await _get(stack, location)
    assert "The queue was resumed:" in text
    assert 'action="/admin/queues/system/pause"' in text
    admin = get_by_email(stack.db, "admin@example.com")
    [paused] = _audited(stack, "queue_paused")
    [resumed] = _audited(stack, "queue_resumed")
    assert paused.actor_id == resumed.actor_id == admin.id
    assert paused.details["queue"] == resumed.details["queue"] == "system"

    not_paused = await _post(stack, "/admin/queues/system/resume")
    assert not_paused.headers["Location"] == "/admin/queues?done=resumed_already&n=0"


async def test_a_pause_with_a_reason_goes_through_its_own_page(embedded_stack: Stack) -> None:
    """The reason's field is not in the table the page refreshes every 5 s (which would wipe
    what is typed): the row links to a page with it."""
    stack = embedded_stack
    text = await _get(stack, "/admin/queues")
    assert 'href="/admin/queues/system/pause"' in text
    form = await _get(stack, "/admin/queues/system/pause")
    assert "<h1>Pause the queue system</h1>" in form
    assert 'name="reason" maxlength="200"' in form
    assert 'action="/admin/queues/system/pause"' in form
    too_long = await stack.client.post(
        "/admin/queues/system/pause",
        data={"reason": "x" * 201},
        headers=stack.headers(stack.admin_token),
        allow_redirects=False,
    )
    assert "reason" in await _page(too_long, 422)
    response = await stack.client.post(
        "/admin/queues/system/pause",
        data={"reason": " migration <until> 14:00 "},
        headers=stack.headers(stack.admin_token),
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/admin/queues?done=paused"
    text = await _get(stack, "/admin/queues")
    row = text[text.index('<tr id="queue-system">') :]
    assert "migration &lt;until&gt; 14:00" in row[: row.index("</tr>")]
    [paused] = _audited(stack, "queue_paused")
    assert paused.details["reason"] == "migration <until> 14:00"
    again = await _get(stack, "/admin/queues/system/pause")
    assert "system is paused already: migration &lt;until&gt; 14:00." in again
    await _get(stack, "/admin/queues/no-such-queue/pause", 404)
    await _get(stack, "/admin/queues/system/pause", 403, stack.member_token)


async def test_pausing_an_unknown_queue_is_not_found_and_members_may_not(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    for action in ("pause", "resume"):
        await _page(await _post(stack, f"/admin/queues/no-such-queue/{action}"), 404)
        await _page(await _post(stack, f"/admin/queues/system/{action}", stack.member_token), 403)
        await _page(await _post(stack, f"/admin/queues/{'q' * 101}/{action}"), 422)
    assert _audited(stack, "queue_paused") == []
    assert _audited(stack, "queue_resumed") == []
