"""Operators' routes on queues: their figures, and pausing and resuming one."""

from __future__ import annotations

import datetime as dt

from aiohttp import web
from pydantic_core import from_json

from conveyor.errors import BadRequestError
from conveyor.http.api.operations import OPERATORS_ONLY, QUEUE
from conveyor.http.api.params import respond, routes
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, USER
from conveyor.http.routes import Answer
from conveyor.http.runtime import run_db
from conveyor.http.schemas import PauseIn, PauseOut, QueueList, QueueOut
from conveyor.models import Role, Scope
from conveyor.services import queue_pauses, queues
from conveyor.services.operations import require_operator

UNKNOWN_QUEUE = {
    404: "No job type uses the queue, it holds no unfinished jobs, and it is not paused"
}


@routes.get(
    "/queues",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="List queues with their figures (operators and admins)",
    answers={200: Answer("Every queue, by name", QueueList)},
    errors=OPERATORS_ONLY,
)
async def list_queues(request: web.Request) -> web.Response:
    """Every queue a job type uses, holds jobs or is paused, by name: its jobs waiting,
    scheduled, running and failed, how long the oldest waiting one has been due, whether it
    is paused, and the live worker processes (and threads) that consume it."""
    require_operator(request[USER])
    container = request.config_dict[CONTAINER]
    timeout = dt.timedelta(seconds=container.settings.worker_timeout_seconds)
    found = await run_db(
        request.config_dict,
        queues.stats,
        {job_type.queue for job_type in container.registry},
        failed=True,
        workers_within=timeout,
    )
    return respond(QueueList(items=[QueueOut.of(q) for q in found]))


async def _known_queue(request: web.Request) -> str:
    """The path's queue, once the caller is known to be an operator and the queue to exist."""
    require_operator(request[USER])  # before anything else: a member learns nothing more
    queue = request.match_info["queue"]
    registry = request.config_dict[CONTAINER].registry
    await run_db(request.config_dict, queue_pauses.check_known, registry, queue)
    return queue


@routes.post(
    "/queues/{queue}/pause",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="Pause a queue (operators and admins)",
    parameters=[QUEUE],
    body=PauseIn,
    body_required=False,
    answers={200: Answer("The queue is paused (`changed`: by this request)", PauseOut)},
    errors={**OPERATORS_ONLY, **UNKNOWN_QUEUE, 400: "Malformed JSON", 422: "A reason too long"},
)
async def pause_queue(request: web.Request) -> web.Response:
    """Pause the queue: its workers take none of its jobs, which wait (submissions are still
    accepted) until it is resumed; jobs already running finish. Pausing a paused queue
    changes nothing. The body is optional: `{"reason": "..."}`."""
    queue = await _known_queue(request)
    body = await request.read()
    try:
        document = from_json(body or b"{}", allow_inf_nan=False)
    except ValueError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    given = PauseIn.model_validate(document)
    changed = await run_db(
        request.config_dict,
        queue_pauses.pause,
        queue,
        request[USER],
        given.reason,
        client=client_of(request),
    )
    return respond(PauseOut(queue=queue, paused=True, changed=changed))


@routes.post(
    "/queues/{queue}/resume",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="Resume a paused queue (operators and admins)",
    parameters=[QUEUE],
    answers={200: Answer("The queue runs (`published`: its waiting jobs sent again)", PauseOut)},
    errors={**OPERATORS_ONLY, **UNKNOWN_QUEUE},
)
async def resume_queue(request: web.Request) -> web.Response:
    """Resume the queue: the jobs that waited are published again at once and its workers
    take them. Resuming a queue that is not paused changes nothing."""
    queue = await _known_queue(request)
    was_paused, published = await resume_for(request, queue)
    return respond(PauseOut(queue=queue, paused=False, changed=was_paused, published=published))


async def resume_for(request: web.Request, queue: str) -> tuple[bool, int]:
    """Resume `queue` as the request's user (the API's and the admin page's): whether it was
    paused, and how many of its waiting jobs were published again."""
    container = request.config_dict[CONTAINER]
    was_paused = queue in await run_db(request.config_dict, queue_pauses.paused)
    published = await run_db(
        request.config_dict,
        queue_pauses.resume,
        container.enqueuer,
        queue,
        request[USER],
        client=client_of(request),
    )
    return was_paused, published
