"""Admin routes that act on many jobs: cancel or retry by filter, purge a queue."""

from __future__ import annotations

from aiohttp import web
from pydantic_core import from_json

from conveyor.errors import BadRequestError
from conveyor.http.api.params import bounded_int, respond, routes
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, USER
from conveyor.http.routes import Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.http.schemas import BulkOut, JobFilterIn
from conveyor.models import Role, Scope
from conveyor.services import operations
from conveyor.services.operations import (
    DEFAULT_BULK_LIMIT,
    MAX_BULK_LIMIT,
    BulkResult,
    JobFilter,
    require_operator,
)

OPERATORS_ONLY = {403: "Not an operator or admin"}


async def _filter(request: web.Request) -> tuple[JobFilter, int]:
    require_operator(request[USER])  # before reading the body: a member learns nothing more
    body = await request.read()
    try:
        document = from_json(body or b"{}", allow_inf_nan=False)
    except ValueError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    given = JobFilterIn.model_validate(document)
    owner_id = None
    if given.owner is not None:
        owner_id = await run_db(request.config_dict, operations.owner_id_of, given.owner)
    where = JobFilter(
        statuses=tuple(s.value for s in given.status),
        types=tuple(given.type),
        queues=tuple(given.queue),
        owner_id=owner_id,
        created_before=given.created_before,
        created_after=given.created_after,
    )
    return where, given.limit


def _out(result: BulkResult) -> BulkOut:
    return BulkOut(
        count=result.count,
        more=result.more,
        cancel_requested=result.stopping,
        skipped=result.skipped,
    )


@routes.post(
    "/jobs/cancel",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="Cancel jobs by filter (operators and admins)",
    body=JobFilterIn,
    answers={200: Answer("How many jobs were cancelled or asked to stop", BulkOut)},
    errors={
        **OPERATORS_ONLY,
        400: "Malformed JSON",
        422: "No filter, a bad field, or a status that cannot be cancelled",
    },
)
async def cancel_jobs(request: web.Request) -> web.Response:
    """Cancel the waiting jobs that match the filter and ask the running ones to stop, up to
    `limit`; `more` says whether matching jobs are left."""
    where, limit = await _filter(request)
    result = await run_db(
        request.config_dict,
        operations.bulk_cancel,
        request.config_dict[CONTAINER].announcements,
        request[USER],
        where,
        limit=limit,
        client=client_of(request),
    )
    return respond(_out(result))


@routes.post(
    "/jobs/retry",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="Retry failed or cancelled jobs by filter (operators and admins)",
    body=JobFilterIn,
    answers={200: Answer("How many jobs were queued again", BulkOut)},
    errors={
        **OPERATORS_ONLY,
        400: "Malformed JSON",
        422: "No filter, a bad field, or a status other than failed and cancelled",
    },
)
async def retry_jobs(request: web.Request) -> web.Response:
    """Give the `failed` and `cancelled` jobs that match a new attempt cycle each, up to
    `limit`; `more` says whether matching jobs are left."""
    where, limit = await _filter(request)
    container = request.config_dict[CONTAINER]
    result = await run_db(
        request.config_dict,
        operations.bulk_retry,
        container.enqueuer,
        container.announcements,
        container.registry,
        request[USER],
        where,
        limit=limit,
        client=client_of(request),
    )
    return respond(_out(result))


QUEUE = Parameter("queue", "path", {"type": "string"}, "The queue's name", required=True)
LIMIT = Parameter(
    "limit",
    "query",
    {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_BULK_LIMIT,
        "default": DEFAULT_BULK_LIMIT,
    },
    "Most jobs cancelled by this request; call again while `more` is true",
)


@routes.post(
    "/queues/{queue}/purge",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="Purge a queue (operators and admins)",
    parameters=[QUEUE, LIMIT],
    answers={200: Answer("How many waiting jobs were cancelled", BulkOut)},
    errors={**OPERATORS_ONLY, 422: "A limit out of range"},
)
async def purge_queue(request: web.Request) -> web.Response:
    """Cancel the waiting jobs (scheduled, queued, retrying) of the queue, up to `limit`;
    `more` says whether some are left (call again). Running jobs go on. The broker's messages
    are skipped by the workers, as for any cancelled job."""
    require_operator(request[USER])
    given = request.query.get("limit")
    # Anything but 1..MAX_BULK_LIMIT becomes 0 or MAX_BULK_LIMIT + 1: a 422 naming `limit`.
    limit = DEFAULT_BULK_LIMIT if given is None else bounded_int(given, 0, MAX_BULK_LIMIT + 1)
    result = await run_db(
        request.config_dict,
        operations.purge_queue,
        request.config_dict[CONTAINER].announcements,
        request[USER],
        request.match_info["queue"],
        limit=limit,
        client=client_of(request),
    )
    return respond(_out(result))
