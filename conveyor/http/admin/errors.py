"""The admin's errors pages: failures grouped by job type and error type, a group with its
sample traceback and its jobs, and what operators do to a whole group (retry it, or discard
it after a confirmation)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from conveyor.errors import NotFoundError
from conveyor.http.admin import routes
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, USER
from conveyor.http.page_params import bad_field, single_text
from conveyor.http.pages import form_of, render
from conveyor.http.routes import HTML, Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import Role
from conveyor.services import error_groups
from conveyor.services.error_groups import ErrorGroup
from conveyor.services.operations import DEFAULT_BULK_LIMIT, BulkResult

#: Groups listed on the errors page, and jobs on a page of a group.
GROUPS = 200
JOBS_PER_PAGE = 50
#: The longest job type or error type a query names (as the columns keep them).
MAX_NAME = 200
#: What a page says after an action (the `done` key of the redirect: never free text).
NOTICES = {
    "retried": "The group's jobs were queued again.",
    "retried_more": f"{DEFAULT_BULK_LIMIT} of the group's jobs were queued again; more are left: "
    "retry again.",
    "discarded": "The group's jobs were deleted.",
    "discarded_more": f"{DEFAULT_BULK_LIMIT} of the group's jobs were deleted; more are left: "
    "discard again.",
    "empty": "The group has no failed job any more.",
}

PAGE = Answer("The page", content_type=HTML, schema={"type": "string"})
BACK = Answer("Done: back to the page", content_type=None)
GROUP = (
    Parameter(
        "type", "query", {"type": "string", "maxLength": MAX_NAME}, "The job type", required=True
    ),
    Parameter(
        "error_type",
        "query",
        {"type": "string", "maxLength": MAX_NAME},
        "The error type (the exception's class); none: errors that name no type",
    ),
)
AFTER = Parameter("after", "query", {"type": "string", "format": "uuid"}, "The page after this job")
DONE = Parameter("done", "query", {"type": "string"}, "The action just done (for its notice)")


def _text(values: Any, name: str) -> str:
    """A single text parameter of a query or a form, trimmed ("" when absent)."""
    return single_text(values, name, max_length=MAX_NAME)


def _up_to(form: Any) -> dt.datetime | None:
    """The newest failure the form's page showed (its hidden `up_to`): the action leaves out
    the jobs that failed after it, which the operator did not see. None when absent."""
    text = _text(form, "up_to")
    if not text:
        return None
    try:
        found = dt.datetime.fromisoformat(text)
    except ValueError:
        raise bad_field("up_to", "not a time") from None
    if found.tzinfo is None:
        raise bad_field("up_to", "a time with its offset from UTC")
    return found


def _group_of(values: Any) -> tuple[str, str | None]:
    job_type = _text(values, "type")
    if not job_type:
        raise bad_field("type", "required")
    return job_type, _text(values, "error_type") or None


def group_url(job_type: str, error_type: str | None, action: str = "", **more: str) -> str:
    """The URL of a group's page, or of its `action` (`discard`: the confirmation)."""
    query = {"type": job_type, **({"error_type": error_type} if error_type else {}), **more}
    return f"/admin/errors/group{'/' + action if action else ''}?{urlencode(query)}"


@routes.get(
    "/errors",
    name="admin_errors",
    role=Role.OPERATOR,
    parameters=(DONE,),
    answers={200: PAGE},
    errors={503: "Reading the groups took too long"},
)
async def errors_page(request: web.Request) -> web.Response:
    """Failures grouped by job type and error type: how many, first and last seen, a sample."""
    found: list[ErrorGroup] = await run_db(request.config_dict, error_groups.groups, limit=GROUPS)
    return render(
        request,
        "admin/errors.html",
        title="Errors",
        groups=found,
        group_url=group_url,
        notice=NOTICES.get(request.query.get("done", "")),
    )


async def _group(request: web.Request, job_type: str, error_type: str | None) -> ErrorGroup:
    found = await run_db(request.config_dict, error_groups.group, job_type, error_type)
    if found is None:
        raise NotFoundError("no failed job has this job type and error type (any more)")
    return found


@routes.get(
    "/errors/group",
    name="admin_error_group",
    role=Role.OPERATOR,
    parameters=(*GROUP, AFTER, DONE),
    answers={200: PAGE},
    errors={404: "No failed job in the group", 422: "A bad parameter", 503: "Too slow"},
)
async def group_page(request: web.Request) -> web.Response:
    """An error group: its counts, its sample's traceback, its jobs; retry or discard it."""
    job_type, error_type = _group_of(request.query)
    after_text = _text(request.query, "after")
    try:
        after = uuid.UUID(after_text) if after_text else None
    except ValueError:
        raise bad_field("after", "not an id") from None
    found = await _group(request, job_type, error_type)
    jobs = await run_db(
        request.config_dict,
        error_groups.jobs_in_group,
        job_type,
        error_type,
        limit=JOBS_PER_PAGE + 1,
        after=after,
    )
    more = len(jobs) > JOBS_PER_PAGE
    jobs = jobs[:JOBS_PER_PAGE]
    return render(
        request,
        "admin/error_group.html",
        title=f"{error_type or 'Errors'} in {job_type}",
        group=found,
        # A type this server does not know cannot run: its jobs are not offered a retry.
        retryable=job_type in request.config_dict[CONTAINER].registry,
        jobs=jobs,
        next_url=group_url(job_type, error_type, after=str(jobs[-1].id)) if more else None,
        first_url=group_url(job_type, error_type) if after else None,
        group_url=group_url,
        notice=NOTICES.get(request.query.get("done", "")),
    )


def _after(
    result: BulkResult, job_type: str, error_type: str | None, done: str
) -> web.HTTPSeeOther:
    """Back to the group's page while some of its jobs are left, else to the errors page."""
    if result.more:
        return web.HTTPSeeOther(group_url(job_type, error_type, done=f"{done}_more"))
    return web.HTTPSeeOther(f"/admin/errors?done={done if result.count else 'empty'}")


@routes.post(
    "/errors/group/retry",
    name="admin_error_group_retry",
    role=Role.OPERATOR,
    answers={303: BACK},
    errors={
        409: "This server does not know the job type",
        422: "No job type given, or a bad up_to",
    },
)
async def retry_group(request: web.Request) -> web.Response:
    """Retry the group's failed jobs, a thousand at most (written to the audit log)."""
    form = await form_of(request)
    job_type, error_type = _group_of(form)
    container = request.config_dict[CONTAINER]
    result = await run_db(
        request.config_dict,
        error_groups.retry_group,
        container.enqueuer,
        container.announcements,
        container.registry,
        job_type,
        error_type,
        request[USER],
        up_to=_up_to(form),
        client=client_of(request),
    )
    raise _after(result, job_type, error_type, "retried")


@routes.get(
    "/errors/group/discard",
    name="admin_error_group_discard_confirm",
    role=Role.OPERATOR,
    parameters=GROUP,
    answers={200: PAGE},
    errors={404: "No failed job in the group", 422: "No job type given"},
)
async def discard_confirm(request: web.Request) -> web.Response:
    """Confirm discarding a group: what will be deleted, and the button that does it."""
    job_type, error_type = _group_of(request.query)
    found = await _group(request, job_type, error_type)
    return render(
        request,
        "admin/error_discard.html",
        title=f"Discard {error_type or 'errors'} in {job_type}?",
        group=found,
        group_url=group_url,
    )


@routes.post(
    "/errors/group/discard",
    name="admin_error_group_discard",
    role=Role.OPERATOR,
    answers={303: BACK},
    errors={422: "No job type given, or a bad up_to"},
)
async def discard_group(request: web.Request) -> web.Response:
    """Delete the group's failed jobs and their events, a thousand at most (written to the
    audit log)."""
    form = await form_of(request)
    job_type, error_type = _group_of(form)
    result = await run_db(
        request.config_dict,
        error_groups.discard_group,
        job_type,
        error_type,
        request[USER],
        up_to=_up_to(form),
        client=client_of(request),
    )
    raise _after(result, job_type, error_type, "discarded")
