"""The queues page (`/admin/queues`): per queue the jobs waiting, scheduled, running and
failed, how long the oldest waiting job has been due, its consumers and whether it is paused;
pausing and resuming a queue; purging one, through a page that says how many jobs it settles
before the operator confirms; and each pool's desired worker processes with the inputs that
give them. Its figures refresh every few seconds. Every action answers with a redirect back
to the page (post, redirect, get), which shows a fixed notice for the action's key; the
services write each action to the audit log."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from conveyor.errors import InvalidRequestError, NotFoundError
from conveyor.http.admin import routes
from conveyor.http.admin.overview import FRAGMENT, PAGE
from conveyor.http.api.queues import resume_for
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, USER
from conveyor.http.pages import form_of, render, text_field
from conveyor.http.routes import Parameter
from conveyor.http.runtime import run_db
from conveyor.models import Role
from conveyor.services import capacity, error_groups, operations, queue_pauses
from conveyor.services.operations import MAX_BULK_LIMIT
from conveyor.services.queue_pauses import MAX_QUEUE, MAX_REASON
from conveyor.services.queues import QueueStats, stats

#: What the page says after an action, by the `done` key of its redirect.
NOTICES: Mapping[str, str] = {
    "paused": (
        "The queue was paused: its workers take none of its jobs until it is resumed; "
        "submissions are still accepted and wait."
    ),
    "paused_already": "The queue was paused already: nothing changed.",
    "resumed": "The queue was resumed: {n} waiting jobs were published again.",
    "resumed_already": "The queue was not paused: nothing changed.",
    "purged": "The queue was purged: {n} waiting jobs were cancelled.",
    "purged_more": (
        "{n} waiting jobs were cancelled, the most one purge settles; more wait in the queue: "
        "purge it again."
    ),
}

DONE = Parameter(
    "done",
    "query",
    {"type": "string", "enum": sorted(NOTICES)},
    "The action just done (set by the action's redirect): the page says so",
)
COUNT = Parameter(
    "n",
    "query",
    {"type": "integer", "minimum": 0},
    "How many jobs the action just done changed (set by its redirect)",
)
QUEUE = Parameter("queue", "path", {"type": "string", "maxLength": MAX_QUEUE}, "The queue")


def _invalid(name: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"the {name} parameter {message}", errors=[{"field": name, "message": message}]
    )


def notice_of(query: Mapping[str, str]) -> str | None:
    """The notice for the action of `?done=...&n=...`; 422 naming a parameter that is bad."""
    done = query.get("done")
    if done is None:
        return None
    if done not in NOTICES:
        raise _invalid("done", f"must be one of {', '.join(sorted(NOTICES))}")
    given = query.get("n", "0")
    if not (given.isascii() and given.isdigit() and len(given) <= 9):
        raise _invalid("n", "must be a whole number")
    return NOTICES[done].format(n=f"{int(given):,}")


async def _queues(request: web.Request, *, failed: bool = False) -> list[QueueStats]:
    """Every queue a job type uses, that holds jobs not finished or is paused, by name. With
    `failed`, the failed jobs of the job types that use each queue too (counted by job type
    from the index of failed jobs, by index only)."""
    container = request.config_dict[CONTAINER]
    names = {job_type.queue for job_type in container.registry}
    found = await run_db(
        request.config_dict,
        stats,
        names,
        workers_within=dt.timedelta(seconds=container.settings.worker_timeout_seconds),
        timeout_seconds=5.0,
    )
    if failed:
        by_type = await run_db(request.config_dict, error_groups.failed_by_type)
        queue_of = {job_type.name: job_type.queue for job_type in container.registry}
        by_queue: dict[str, int] = {}
        for job_type, n in by_type.items():
            if job_type in queue_of:
                by_queue[queue_of[job_type]] = by_queue.get(queue_of[job_type], 0) + n
        for entry in found:
            entry.failed = by_queue.get(entry.queue, 0)
    return found


async def _queue(request: web.Request) -> QueueStats:
    """The path's queue; 404 unless a job type uses it, it holds jobs not finished, or it is
    paused."""
    name = request.match_info["queue"]
    if len(name) > MAX_QUEUE:
        raise _invalid("queue", f"must be at most {MAX_QUEUE} characters")
    for found in await _queues(request):
        if found.queue == name:
            return found
    raise NotFoundError(f"no queue {name!r}: no job type uses it and it holds no unfinished jobs")


async def _live_context(request: web.Request) -> dict[str, Any]:
    """What the live part of the page shows: the queues, and the capacity of each pool (its
    inputs read from the same queue figures)."""
    settings = request.config_dict[CONTAINER].settings
    found = await _queues(request, failed=True)
    pools = await run_db(request.config_dict, capacity.desired, settings, stats=found)
    return {
        "queues": found,
        "pools": pools,
        "model": capacity.Model.of(settings),
        "worker_timeout": dt.timedelta(seconds=settings.worker_timeout_seconds),
    }


@routes.get(
    "/queues",
    name="admin_queues",
    role=Role.OPERATOR,
    answers={200: PAGE},
    parameters=(DONE, COUNT),
)
async def queues_page(request: web.Request) -> web.Response:
    """Every queue's figures, and its actions."""
    notice = notice_of(request.query)
    return render(
        request, "admin/queues.html", title="Queues", notice=notice, **await _live_context(request)
    )


@routes.get("/queues/live", name="admin_queues_live", role=Role.OPERATOR, answers={200: FRAGMENT})
async def queues_live(request: web.Request) -> web.Response:
    """Every queue's figures alone, for the page to refresh them in place."""
    return render(request, "admin/_queues.html", **await _live_context(request))


@routes.get(
    "/queues/{queue}/purge",
    name="admin_queue_purge_confirm",
    role=Role.OPERATOR,
    answers={200: PAGE},
    parameters=(QUEUE,),
)
async def purge_confirm(request: web.Request) -> web.Response:
    """What purging the queue would do, and the form that does it."""
    queue = await _queue(request)
    return render(
        request,
        "admin/queues_purge.html",
        title=f"Purge the queue {queue.queue}",
        queue=queue,
        limit=MAX_BULK_LIMIT,
    )


@routes.post(
    "/queues/{queue}/purge",
    name="admin_queue_purge",
    role=Role.OPERATOR,
    answers={303: PAGE},
    parameters=(QUEUE,),
)
async def purge(request: web.Request) -> web.Response:
    """Purge the queue: cancel its waiting and scheduled jobs (up to the bulk limit; running
    ones go on), then back to the queues page, which says how many."""
    await form_of(request)
    queue = await _queue(request)
    result = await run_db(
        request.config_dict,
        operations.purge_queue,
        request.config_dict[CONTAINER].announcements,
        request[USER],
        queue.queue,
        limit=MAX_BULK_LIMIT,
        client=client_of(request),
    )
    done = "purged_more" if result.more else "purged"
    raise web.HTTPSeeOther(f"/admin/queues?done={done}&n={result.count}")


async def _known_queue(request: web.Request) -> tuple[str, Mapping[str, Any]]:
    """The path's queue and the posted form, once checked; 404 unless a job type uses the
    queue, it holds jobs not finished, or it is paused."""
    form = await form_of(request)
    name = request.match_info["queue"]
    if len(name) > MAX_QUEUE:
        raise _invalid("queue", f"must be at most {MAX_QUEUE} characters")
    registry = request.config_dict[CONTAINER].registry
    await run_db(request.config_dict, queue_pauses.check_known, registry, name)
    return name, form


@routes.get(
    "/queues/{queue}/pause",
    name="admin_queue_pause_form",
    role=Role.OPERATOR,
    answers={200: PAGE},
    parameters=(QUEUE,),
)
async def pause_form(request: web.Request) -> web.Response:
    """The pause with a reason: a page of its own, as the queues' table is replaced every few
    seconds (it would wipe what is being typed)."""
    queue = await _queue(request)
    return render(
        request,
        "admin/queues_pause.html",
        title=f"Pause the queue {queue.queue}",
        queue=queue,
        max_reason=MAX_REASON,
    )


@routes.post(
    "/queues/{queue}/pause",
    name="admin_queue_pause",
    role=Role.OPERATOR,
    answers={303: PAGE},
    parameters=(QUEUE,),
)
async def pause(request: web.Request) -> web.Response:
    """Pause the queue, with the form's optional `reason`: its workers take none of its jobs
    (running ones finish), which wait until it is resumed; then back to the queues page."""
    queue, form = await _known_queue(request)
    reason = text_field(form, "reason")
    if len(reason) > MAX_REASON:
        raise _invalid("reason", f"must be at most {MAX_REASON} characters")
    changed = await run_db(
        request.config_dict,
        queue_pauses.pause,
        queue,
        request[USER],
        reason or None,
        client=client_of(request),
    )
    raise web.HTTPSeeOther(f"/admin/queues?done={'paused' if changed else 'paused_already'}")


@routes.post(
    "/queues/{queue}/resume",
    name="admin_queue_resume",
    role=Role.OPERATOR,
    answers={303: PAGE},
    parameters=(QUEUE,),
)
async def resume(request: web.Request) -> web.Response:
    """Resume the queue: its waiting jobs are published again at once and its workers take
    them; then back to the queues page, which says how many."""
    queue, _ = await _known_queue(request)
    was_paused, published = await resume_for(request, queue)
    done = "resumed" if was_paused else "resumed_already"
    raise web.HTTPSeeOther(f"/admin/queues?done={done}&n={published}")
