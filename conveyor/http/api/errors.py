"""Operators' routes on failures grouped by job type and error type: list the groups, retry
or discard a group's failed jobs."""

from __future__ import annotations

from aiohttp import web

from conveyor.http.api.operations import OPERATORS_ONLY
from conveyor.http.api.params import bounded_int, read_body, respond, routes
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, USER
from conveyor.http.routes import Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.http.schemas import BulkOut, ErrorGroupIn, ErrorGroupList, ErrorGroupOut
from conveyor.models import Role, Scope
from conveyor.services import error_groups
from conveyor.services.error_groups import MAX_GROUPS
from conveyor.services.operations import BulkResult, require_operator

DEFAULT_GROUPS = 100
GROUPS_LIMIT = Parameter(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": MAX_GROUPS, "default": DEFAULT_GROUPS},
    "Most groups listed",
)


def _out(result: BulkResult) -> BulkOut:
    return BulkOut(count=result.count, more=result.more, skipped=result.skipped)


@routes.get(
    "/errors",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="Failed jobs grouped by job type and error type (operators and admins)",
    parameters=[GROUPS_LIMIT],
    answers={200: Answer("The groups, the most recently seen first", ErrorGroupList)},
    errors=OPERATORS_ONLY,
)
async def list_groups(request: web.Request) -> web.Response:
    """The error groups, each with its count, when it was first and last seen, and its
    newest job as a sample (`GET /v1/jobs/{id}` has its traceback)."""
    require_operator(request[USER])
    given = request.query.get("limit")
    limit = DEFAULT_GROUPS if given is None else bounded_int(given, 1, MAX_GROUPS)
    found = await run_db(request.config_dict, error_groups.groups, limit=limit)
    items = [
        ErrorGroupOut(
            type=g.job_type,
            error_type=g.error_type,
            count=g.count,
            first_seen=g.first_seen,
            last_seen=g.last_seen,
            sample_job_id=g.sample_id,
            message=g.message,
        )
        for g in found
    ]
    return respond(ErrorGroupList(items=items))


@routes.post(
    "/errors/retry",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="Retry the failed jobs of an error group (operators and admins)",
    body=ErrorGroupIn,
    answers={200: Answer("How many jobs were queued again", BulkOut)},
    errors={
        **OPERATORS_ONLY,
        400: "Malformed JSON",
        409: "This server does not know the job type: its jobs cannot be retried",
        422: "A bad field",
    },
)
async def retry_group(request: web.Request) -> web.Response:
    """Give up to `limit` failed jobs of the group a new attempt cycle each; `more` says
    whether some are left. Written to the audit log. 409 when this server does not know the
    job type (discard the group, or deploy the code that declares it)."""
    require_operator(request[USER])  # before reading the body: a member learns nothing more
    given = await read_body(request, ErrorGroupIn)
    container = request.config_dict[CONTAINER]
    result = await run_db(
        request.config_dict,
        error_groups.retry_group,
        container.enqueuer,
        container.announcements,
        container.registry,
        given.type,
        given.error_type,
        request[USER],
        limit=given.limit,
        up_to=given.up_to,
        client=client_of(request),
    )
    return respond(_out(result))


@routes.post(
    "/errors/discard",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="Delete the failed jobs of an error group (operators and admins)",
    body=ErrorGroupIn,
    answers={200: Answer("How many jobs were deleted", BulkOut)},
    errors={**OPERATORS_ONLY, 400: "Malformed JSON", 422: "A bad field"},
)
async def discard_group(request: web.Request) -> web.Response:
    """Delete up to `limit` failed jobs of the group, with their events; `more` says whether
    some are left. Written to the audit log."""
    require_operator(request[USER])
    given = await read_body(request, ErrorGroupIn)
    result = await run_db(
        request.config_dict,
        error_groups.discard_group,
        given.type,
        given.error_type,
        request[USER],
        limit=given.limit,
        up_to=given.up_to,
        client=client_of(request),
    )
    return respond(_out(result))
