"""The admin's job pages: every job, found by filter, and one job with its history, its
children, and the buttons that retry or cancel it."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import MultiDict, MultiMapping

from conveyor.errors import NotFoundError
from conveyor.http.admin import routes
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, USER
from conveyor.http.page_params import bad_field, single_text
from conveyor.http.pages import form_of, render
from conveyor.http.routes import HTML, Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import Job, JobStatus, Role
from conveyor.models.job import FINISHED
from conveyor.services import admin_jobs, operations
from conveyor.services.admin_jobs import Search, SearchPage
from conveyor.services.operations import CANCELLABLE, RETRYABLE, JobFilter

#: Jobs on a page: by default, and at most.
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: The longest text a filter takes (a job type's name is at most 200 characters).
MAX_TEXT = 200
#: What a page says after an action (the `done` key of the redirect: never free text).
NOTICES = {
    "retried": "The job was queued again.",
    "cancelled": "The job was cancelled.",
    "stopping": "The job's worker was asked to stop it; it ends cancelled once it stops.",
}

PAGE = Answer("The page", content_type=HTML, schema={"type": "string"})
FRAGMENT = Answer("A fragment of the page, for its live part", content_type=HTML)
BACK = Answer("Done: back to the job's page", content_type=None)
JOB_ID = Parameter(
    "job_id", "path", {"type": "string", "format": "uuid"}, "The job's id", required=True
)
STATUSES = [s.value for s in JobStatus]
FILTERS = (
    Parameter(
        "status",
        "query",
        {"type": "array", "items": {"type": "string", "enum": STATUSES}},
        "Jobs in any of these statuses (repeat the parameter)",
    ),
    Parameter("type", "query", {"type": "string"}, "Job types, comma-separated"),
    Parameter("queue", "query", {"type": "string"}, "Queues, comma-separated"),
    Parameter("owner", "query", {"type": "string"}, "The owner's email (or id)"),
    Parameter(
        "created_from",
        "query",
        {"type": "string", "format": "date-time"},
        "Made at or after this time (UTC unless it says)",
    ),
    Parameter(
        "created_to",
        "query",
        {"type": "string", "format": "date-time"},
        "Made before this time (UTC unless it says)",
    ),
    Parameter(
        "error",
        "query",
        {"type": "string", "maxLength": MAX_TEXT},
        "Text in the error's message or type (failed, retrying and cancelled jobs only)",
    ),
    Parameter("parent", "query", {"type": "string", "format": "uuid"}, "The parent job's id"),
    Parameter("before", "query", {"type": "string", "format": "uuid"}, "The page after this job"),
    Parameter(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "Jobs per page",
    ),
)
EVENTS_AFTER = Parameter(
    "events_after",
    "query",
    {"type": "integer", "minimum": 0, "default": 0},
    "The timeline's page after this event",
)
DONE = Parameter("done", "query", {"type": "string"}, "The action just done (for its notice)")


def _text(query: MultiMapping[str], name: str) -> str:
    return single_text(query, name, max_length=MAX_TEXT)


def _names(query: MultiMapping[str], name: str) -> tuple[str, ...]:
    """A list of names: the parameter repeated, or its values comma-separated."""
    found: dict[str, None] = {}
    for value in query.getall(name, []):
        for part in value.split(","):
            if len(part.strip()) > MAX_TEXT:
                raise bad_field(name, f"each at most {MAX_TEXT} characters")
            if part.strip():
                found[part.strip()] = None
    return tuple(found)


def _statuses(query: MultiMapping[str]) -> tuple[str, ...]:
    given = _names(query, "status")
    wrong = [s for s in given if s not in STATUSES]
    if wrong:
        raise bad_field("status", f"unknown status {wrong[0]!r}; one of {', '.join(STATUSES)}")
    return given


def _moment(query: MultiMapping[str], name: str) -> dt.datetime | None:
    """A time from a form's `datetime-local` field (UTC), a date, or ISO 8601 with a zone."""
    value = _text(query, name)
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise bad_field(name, "not a date and time (like 2026-12-02T13:05)") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 has no UTC time
        raise bad_field(name, "out of range (no such time in UTC)") from None


def _uuid(query: MultiMapping[str], name: str) -> uuid.UUID | None:
    value = _text(query, name)
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise bad_field(name, "not an id") from None


def _int(query: MultiMapping[str], name: str, default: int, low: int, high: int) -> int:
    value = _text(query, name)
    if not value:
        return default
    if not (len(value) <= 19 and value.isascii() and value.isdigit()):
        raise bad_field(name, f"a whole number from {low} to {high}")
    if not low <= int(value) <= high:
        raise bad_field(name, f"a whole number from {low} to {high}")
    return int(value)


async def _search_of(request: web.Request) -> Search:
    query = request.query
    owner = _text(query, "owner")
    created_after = _moment(query, "created_from")
    created_before = _moment(query, "created_to")
    if created_after and created_before and created_before <= created_after:
        raise bad_field("created_to", "must be after created_from")
    owner_id = None
    if owner:
        owner_id = await run_db(request.config_dict, operations.owner_id_of, owner)
    where = JobFilter(
        statuses=_statuses(query),
        types=_names(query, "type"),
        queues=_names(query, "queue"),
        owner_id=owner_id,
        created_after=created_after,
        created_before=created_before,
    )
    return Search(where, error_text=_text(query, "error"), parent_id=_uuid(query, "parent"))


def _page_url(request: web.Request, before: uuid.UUID | None) -> str:
    """This page's URL, its filters kept (repeated ones too), at the page after `before`
    (None: the first page)."""
    query = MultiDict((k, v) for k, v in request.query.items() if k != "before")
    if before is not None:
        query["before"] = str(before)
    return str(request.rel_url.with_query(query))


@routes.get(
    "/jobs",
    name="admin_jobs",
    role=Role.OPERATOR,
    parameters=FILTERS,
    answers={200: PAGE},
    errors={422: "A bad filter (the page names it)"},
)
async def jobs_page(request: web.Request) -> web.Response:
    """Every job, newest first, by status, type, queue, owner, creation time and the text of
    its error."""
    criteria = await _search_of(request)
    before = _uuid(request.query, "before")
    limit = _int(request.query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    container = request.config_dict[CONTAINER]
    page: SearchPage = await run_db(
        request.config_dict,
        admin_jobs.search,
        container.registry,
        request[USER],
        criteria,
        before=before,
        limit=limit,
    )
    query = request.query
    return render(
        request,
        "admin/jobs.html",
        title="Jobs",
        page=page,
        statuses=STATUSES,
        chosen=set(_statuses(query)),
        form={name: ", ".join(_names(query, name)) for name in ("type", "queue")}
        | {
            name: _text(query, name)
            for name in ("owner", "created_from", "created_to", "error", "parent")
        },
        job_types=[t.name for t in container.registry],
        queues=sorted({t.queue for t in container.registry}),
        filtered=bool(set(query) - {"limit"}),
        first_url=_page_url(request, None) if before else None,
        next_url=_page_url(request, page.next_before) if page.next_before else None,
    )


# --- one job ---------------------------------------------------------------------------------


def _job_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["job_id"])
    except ValueError:
        raise NotFoundError("no such job (not a job id)") from None


def _actions(job: Job) -> dict[str, bool]:
    return {
        "retry": job.status in RETRYABLE,
        "cancel": job.status in CANCELLABLE and not job.cancel_requested,
    }


async def _job_context(request: web.Request) -> dict[str, Any]:
    events_after = _int(request.query, "events_after", 0, 0, 2**62)
    page = await run_db(
        request.config_dict,
        admin_jobs.job_page,
        request[USER],
        _job_id(request),
        events_after=events_after,
    )
    job = page.job
    live = f"/admin/jobs/{job.id}/live"
    if events_after:
        live += f"?events_after={events_after}"
    return {
        "page": page,
        "job": job,
        "finished": job.status in FINISHED,
        "can": _actions(job),
        "events_after": events_after,
        "live_url": live,
    }


@routes.get(
    "/jobs/{job_id}",
    name="admin_job",
    role=Role.OPERATOR,
    parameters=(JOB_ID, EVENTS_AFTER, DONE),
    answers={200: PAGE},
    errors={404: "No such job", 422: "A bad events_after"},
)
async def job_page(request: web.Request) -> web.Response:
    """A job: its facts, payload, result, error and traceback, every event, its parent and
    children; retry and cancel."""
    context = await _job_context(request)
    return render(
        request,
        "admin/job.html",
        title=f"Job {context['job'].id}",
        notice=NOTICES.get(request.query.get("done", "")),
        **context,
    )


@routes.get(
    "/jobs/{job_id}/live",
    name="admin_job_live",
    role=Role.OPERATOR,
    parameters=(JOB_ID, EVENTS_AFTER),
    answers={200: FRAGMENT},
    errors={404: "No such job", 422: "A bad events_after"},
)
async def job_live(request: web.Request) -> web.Response:
    """The live part of a job's page: status, progress, actions, result, error, timeline."""
    return render(request, "admin/_job_live.html", **await _job_context(request))


def _back(job: Job, done: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/admin/jobs/{job.id}?done={done}")


async def _act(request: web.Request, act: Callable[..., Job], *args: Any, **kwargs: Any) -> Job:
    await form_of(request)  # the CSRF check of a signed-in browser
    return await run_db(
        request.config_dict,
        act,
        *args,
        _job_id(request),
        request[USER],
        client=client_of(request),
        **kwargs,
    )


@routes.post(
    "/jobs/{job_id}/retry",
    name="admin_job_retry",
    role=Role.OPERATOR,
    parameters=(JOB_ID,),
    answers={303: BACK},
    errors={404: "No such job", 409: "The job is not failed or cancelled"},
)
async def retry_job(request: web.Request) -> web.Response:
    """Retry a failed or cancelled job (written to the audit log)."""
    container = request.config_dict[CONTAINER]
    job = await _act(
        request,
        admin_jobs.retry,
        container.enqueuer,
        container.announcements,
        container.registry,
    )
    raise _back(job, "retried")


@routes.post(
    "/jobs/{job_id}/cancel",
    name="admin_job_cancel",
    role=Role.OPERATOR,
    parameters=(JOB_ID,),
    answers={303: BACK},
    errors={404: "No such job", 409: "The job already succeeded or failed"},
)
async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a waiting job, or ask a running one to stop (written to the audit log)."""
    container = request.config_dict[CONTAINER]
    finished = container.metrics.finished
    job = await _act(
        request,
        admin_jobs.cancel,
        container.announcements,
        on_cancelled=lambda job: finished.labels(job.type, JobStatus.CANCELLED.value).inc(),
    )
    raise _back(job, "cancelled" if job.status in FINISHED else "stopping")
