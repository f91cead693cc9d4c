"""The pages of the worker pools that have one beyond the queues: the notifications pool
(`/admin/notifications`): the deliveries of the last hour by channel, provider and outcome,
and the latest failed deliveries with their errors. The pools this version does not have yet
(reports, schedules, workflows) have a page that says what will appear there."""

from __future__ import annotations

from aiohttp import web

from conveyor.http.admin import routes
from conveyor.http.admin.overview import PAGE
from conveyor.http.keys import CONTAINER, USER
from conveyor.http.pages import render
from conveyor.http.runtime import run_db
from conveyor.models import Role
from conveyor.models.notification import DeliveryStatus
from conveyor.services import delivery_stats, notifications
from conveyor.services.cursors import Cursors

#: The failed deliveries the page lists, newest first.
FAILURES_SHOWN = 25


@routes.get("/notifications", name="admin_notifications", role=Role.OPERATOR, answers={200: PAGE})
async def notifications_page(request: web.Request) -> web.Response:
    """The notifications pool: recent deliveries by channel, provider and outcome; failures."""
    settings = request.config_dict[CONTAINER].settings
    summary = await run_db(request.config_dict, delivery_stats.summary)
    failures = await run_db(
        request.config_dict,
        notifications.list_deliveries,
        request[USER],
        Cursors.of(settings),
        statuses=[DeliveryStatus.FAILED.value],
        limit=FAILURES_SHOWN,
    )
    return render(
        request,
        "admin/notifications.html",
        title="Notifications",
        summary=summary,
        statuses=delivery_stats.SHOWN,
        failures=failures.items,
        more_failures=failures.next_cursor is not None,
    )


#: The pages of pools to come: path -> (title, what the page will show).
COMING = {
    "reports": (
        "Reports",
        "Reports generated on demand and by schedules: their status, row counts, sizes and "
        "download links. They appear here once the reports pool runs (a worker-reports line "
        "in the Procfile).",
    ),
    "schedules": (
        "Schedules",
        "Periodic jobs and reports: their cron expressions, next and last fire times, paused "
        "state and misfires. They appear here once the scheduler runs (conveyor scheduler).",
    ),
    "workflows": (
        "Workflows",
        "Chains, groups and joins of jobs: each workflow's status derived from its steps, and "
        "the steps themselves. They appear here once the business pool runs (a "
        "worker-business line in the Procfile).",
    ),
}


def _coming(path: str) -> None:
    title, what = COMING[path]

    async def page(request: web.Request) -> web.Response:
        return render(request, "admin/coming.html", title=title, what=what)

    page.__doc__ = f"The {title.lower()} page: an empty state until its pool runs."
    routes.get(f"/{path}", name=f"admin_{path}", role=Role.OPERATOR, answers={200: PAGE})(page)


for _path in COMING:
    _coming(_path)
