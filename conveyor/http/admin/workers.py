"""The workers page (`/admin/workers`): each worker process alive (heard from within the worker
timeout), with its host, pid, pool, queues, threads, start, last heartbeat and jobs in hand.
A process that stops sending heartbeats drops off the list; the list refreshes itself."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from conveyor.http.admin import routes
from conveyor.http.admin.overview import FRAGMENT, PAGE
from conveyor.http.keys import CONTAINER
from conveyor.http.pages import render
from conveyor.http.runtime import run_db
from conveyor.models import Role
from conveyor.models.worker import Worker
from conveyor.services import workers


async def _alive(request: web.Request) -> tuple[list[Worker], float]:
    timeout = request.config_dict[CONTAINER].settings.worker_timeout_seconds
    alive = await run_db(request.config_dict, workers.alive, dt.timedelta(seconds=timeout))
    return alive, timeout


@routes.get("/workers", name="admin_workers", role=Role.OPERATOR, answers={200: PAGE})
async def workers_page(request: web.Request) -> web.Response:
    """The worker processes alive, by pool, host and pid."""
    alive, timeout = await _alive(request)
    return render(request, "admin/workers.html", title="Workers", workers=alive, timeout=timeout)


@routes.get("/workers/live", name="admin_workers_live", role=Role.OPERATOR, answers={200: FRAGMENT})
async def workers_live(request: web.Request) -> web.Response:
    """The worker processes alive, alone, for the page to refresh them in place."""
    alive, timeout = await _alive(request)
    return render(request, "admin/_workers.html", workers=alive, timeout=timeout)
