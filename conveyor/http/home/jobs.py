"""The user's jobs at /app: their list, each job's page (cancel, retry), and the form that
submits a new one.

These pages show the signed-in user's own jobs only, an admin's too (everyone's jobs are
under /admin): every service is called with the user acting as a member. A submission
takes the path of `POST /v1/jobs` (the same submission service, limits and idempotency), and
cancel and retry the services of the API's routes, so a page can do nothing the API would
refuse the user.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from conveyor.errors import BadRequestError, ConflictError, InvalidRequestError
from conveyor.http.api.params import job_id_of
from conveyor.http.home import routes
from conveyor.http.home.forms import FREE_FIELD, PayloadForm, field_of_error, payload_form
from conveyor.http.keys import CONTAINER, METRICS, PRINCIPAL
from conveyor.http.pages import form_of, render, text_field
from conveyor.http.routes import HTML, Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import Job, JobStatus, Role, User
from conveyor.models.job import FINISHED
from conveyor.registry import JobType
from conveyor.services import jobs, operations
from conveyor.services.cursors import Cursors
from conveyor.services.submissions import validated_payload

T = TypeVar("T")

PAGE = {200: Answer("A page", content_type=HTML, schema={"type": "string"})}
FRAGMENT = {200: Answer("A part of a page", content_type=HTML, schema={"type": "string"})}
JOB_ID = Parameter("job_id", "path", {"type": "string", "format": "uuid"}, "The job's id", True)
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: Events a job's page shows, the newest.
EVENTS = 50
LIST_PARAMETERS = (
    Parameter(
        "status", "query", {"enum": [s.value for s in JobStatus]}, "Only jobs in this status"
    ),
    Parameter("type", "query", {"type": "string"}, "Only jobs of this type"),
    Parameter(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "Jobs per page",
    ),
    Parameter("cursor", "query", {"type": "string"}, "Where the next page starts"),
)
#: What the `done` of a redirect says (never text from the URL itself).
NOTICES = {
    "submitted": "Your job was submitted.",
    "replayed": "You had submitted this job with that idempotency key already: here it is.",
    "cancelled": "The job was cancelled.",
    "stopping": "The job is running: it was asked to stop.",
    "retried": "The job was queued again.",
    "finished": "The job had already finished: there was nothing to cancel.",
    "not_retryable": "Only a failed or cancelled job can be retried.",
    "unknown_type": "This server does not know the job's type any more: it cannot run again.",
}


def own_viewer(request: web.Request) -> User:
    """The signed-in user acting as a member: the services then show and change their own
    jobs only, whatever their role."""
    return dataclasses.replace(request[PRINCIPAL], role=Role.MEMBER).viewer


def notice_of(request: web.Request) -> str:
    return NOTICES.get(request.query.get("done", ""), "")


# --- the list ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Listing:
    """A page of the user's jobs, and the filters that made it."""

    jobs: list[Job]
    status: str
    type: str
    limit: int
    next_cursor: str | None
    cursor: str  #: where this page started ("" for the first)
    query: str  #: the filters as a query string (for the pager)

    @property
    def live_query(self) -> str:
        """This page's query string, for its live part."""
        page = urlencode({"cursor": self.cursor}) if self.cursor else ""
        return "&".join(part for part in (self.query, page) if part)


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if value.isascii() and value.isdigit() and len(value) < 5 and 1 <= int(value) <= MAX_LIMIT:
        return int(value)
    raise InvalidRequestError(
        f"limit must be a whole number from 1 to {MAX_LIMIT}",
        errors=[{"field": "limit", "message": f"1 to {MAX_LIMIT}"}],
    )


async def _listing(request: web.Request) -> Listing:
    container = request.config_dict[CONTAINER]
    status = request.query.get("status", "")
    if status and status not in {s.value for s in JobStatus}:
        raise InvalidRequestError(
            f"unknown status {status[:50]!r}",
            errors=[{"field": "status", "message": "must be a job status"}],
        )
    type_ = request.query.get("type", "")
    if type_ and type_ not in container.registry:
        raise InvalidRequestError(
            f"unknown job type {type_[:100]!r}",
            errors=[{"field": "type", "message": "not a job type of this server"}],
        )
    limit = _limit(request.query.get("limit"))
    cursor = request.query.get("cursor", "")
    try:
        page = await run_db(
            request.config_dict,
            jobs.list_jobs,
            own_viewer(request),
            Cursors.of(container.settings),
            statuses=[status] if status else [],
            types=[type_] if type_ else [],
            cursor=cursor or None,
            limit=limit,
        )
    except BadRequestError:
        raise InvalidRequestError(
            "this cursor is not one of this listing's: start again from the first page",
            errors=[{"field": "cursor", "message": "not a cursor of this listing"}],
        ) from None
    filters = {"status": status, "type": type_}
    if limit != DEFAULT_LIMIT:
        filters["limit"] = str(limit)
    query = urlencode({name: value for name, value in filters.items() if value})
    return Listing(page.jobs, status, type_, limit, page.next_cursor, cursor, query)


@routes.get(
    "/",
    name="home_index",
    role=Role.MEMBER,
    parameters=LIST_PARAMETERS,
    answers=PAGE,
    errors={422: "A bad status, type, limit or cursor"},
)
async def index(request: web.Request) -> web.Response:
    """The signed-in user's jobs, newest first: status, progress and age, live."""
    listing = await _listing(request)
    # The types users submit; an internal one (a notification's delivery, say) only when the
    # URL filters by it, so that the form shows the filter in force.
    types = [t.name for t in request.config_dict[CONTAINER].registry.public()]
    if listing.type and listing.type not in types:
        types.append(listing.type)
    return render(
        request,
        "app/index.html",
        title="Your jobs",
        listing=listing,
        types=types,
        statuses=[s.value for s in JobStatus],
        notice=notice_of(request),
    )


@routes.get(
    "/jobs/live",
    name="home_jobs_live",
    role=Role.MEMBER,
    parameters=LIST_PARAMETERS,
    answers=FRAGMENT,
    errors={422: "A bad status, type, limit or cursor"},
)
async def jobs_live(request: web.Request) -> web.Response:
    """The list of the user's jobs alone, as the page refreshes it."""
    return render(request, "app/_jobs.html", listing=await _listing(request))


# --- a new job ----------------------------------------------------------------------------


def _form_context(
    request: web.Request,
    job_type: JobType,
    form: PayloadForm,
    values: dict[str, str],
    errors: list[dict[str, Any]],
) -> dict[str, Any]:
    """What new.html shows of a job type's form: its inputs with their values and errors,
    and the errors that belong to no input."""
    inputs = {f.key for f in form.fields} | {"delay_seconds", "idempotency_key"}
    if form.free:
        inputs.add(FREE_FIELD)
    aliases = {"Idempotency-Key": "idempotency_key", "run_at": "delay_seconds"}
    by_field: dict[str, list[str]] = {}
    general: list[str] = []
    for error in errors:
        name = aliases.get(str(error.get("field", "")), str(error.get("field", "")))
        where = field_of_error(name, inputs)
        message = str(error.get("message", ""))
        if where is None:
            general.append(f"{name}: {message}" if name else message)
        else:
            by_field.setdefault(where, []).append(message)
    return {
        "title": f"New job: {job_type.name}",
        "job_type": job_type,
        "form": form,
        "values": values,
        "errors": by_field,
        "general_errors": general,
        "max_delay": request.config_dict[CONTAINER].settings.max_delay_seconds,
    }


@routes.get(
    "/jobs/new",
    name="home_new_job",
    role=Role.MEMBER,
    parameters=[
        Parameter("type", "query", {"type": "string"}, "The job type to submit"),
        Parameter(
            "from",
            "query",
            {"type": "string", "format": "uuid"},
            "One of the user's jobs of that type: the form starts with its input",
        ),
    ],
    answers=PAGE,
    errors={
        404: "`from` is no job of the user's",
        422: "Not a job type users may submit, or a `from` that is not a job id of that type",
    },
)
async def new_job(request: web.Request) -> web.Response:
    """Pick a job type, then fill in the form generated from its payload's JSON Schema
    (`from`: starting with an earlier job's input, to run it again)."""
    registry = request.config_dict[CONTAINER].registry
    name = request.query.get("type", "")
    if not name:
        return render(request, "app/job_types.html", title="New job", types=registry.public())
    job_type = registry.submittable(name)
    form = payload_form(job_type.payload.model_json_schema())
    values = {**form.defaults(), "delay_seconds": "", "idempotency_key": ""}
    earlier = request.query.get("from", "")
    if earlier:
        values.update(form.values_of(await _input_of(request, earlier, job_type)))
    return render(request, "app/new.html", **_form_context(request, job_type, form, values, []))


async def _input_of(request: web.Request, job_id: str, job_type: JobType) -> dict[str, Any]:
    """The payload of the user's job `job_id`, which must be of `job_type`."""
    try:
        found = uuid.UUID(job_id)
    except ValueError:
        raise InvalidRequestError(
            "from must be a job id", errors=[{"field": "from", "message": "not a job id"}]
        ) from None
    job = await run_db(request.config_dict, jobs.get, found, own_viewer(request))
    if job.type != job_type.name:
        raise InvalidRequestError(
            f"from is a {job.type} job, not a {job_type.name} one",
            errors=[{"field": "from", "message": f"a job of type {job_type.name}"}],
        )
    return job.payload


@routes.post(
    "/jobs/new",
    name="home_submit_job",
    role=Role.MEMBER,
    parameters=[Parameter("type", "query", {"type": "string"}, "The job type to submit")],
    answers={303: Answer("Submitted: the job's page", content_type=None)},
    errors={422: "An unknown type, or the form's errors next to their fields"},
)
async def submit_job(request: web.Request) -> web.Response:
    """Submit the form as `POST /v1/jobs` would: 303 to the new job's page, or the form again
    (422) with each error next to its field and the values as they were."""
    posted = await form_of(request)
    container = request.config_dict[CONTAINER]
    job_type = container.registry.submittable(
        request.query.get("type", "") or text_field(posted, "type")
    )
    form = payload_form(job_type.payload.model_json_schema())
    values = {key: value for key, value in posted.items() if isinstance(value, str)}
    payload, unread = form.payload(values)
    errors = [{"field": name, "message": message} for name, message in unread.items()]
    delay: float | None = None
    delay_text = text_field(posted, "delay_seconds")
    if delay_text:
        try:
            delay = float(delay_text)
        except ValueError:
            errors.append({"field": "delay_seconds", "message": "must be a number of seconds"})
    key = text_field(posted, "idempotency_key") or None
    if delay is not None:  # a bad delay fails the build first: check the payload on its own
        _collect(errors, lambda: validated_payload(job_type, payload))
    submissions = container.submissions
    new = _collect(
        errors,
        lambda: submissions.build(
            job_type, payload, owner_id=own_viewer(request).id, idempotency_key=key, delay=delay
        ),
    )
    if errors or new is None:
        context = _form_context(request, job_type, form, values, errors)
        return render(request, "app/new.html", status=422, **context)
    submitted = await submissions.asubmit(new)
    if submitted.created:
        request.config_dict[METRICS].submitted.labels(submitted.job.type).inc()
    done = "submitted" if submitted.created else "replayed"
    raise web.HTTPSeeOther(f"/app/jobs/{submitted.job.id}?done={done}")


def _collect(errors: list[dict[str, Any]], check: Callable[[], T]) -> T | None:
    """`check()`, or None with its errors added to `errors` (but for fields already there)."""
    try:
        return check()
    except (InvalidRequestError, BadRequestError) as exc:
        seen = {e["field"] for e in errors}
        errors.extend(e for e in exc.errors if e.get("field") not in seen)
        if not exc.errors:
            errors.append({"field": "", "message": exc.detail})
        return None


# --- a job --------------------------------------------------------------------------------


async def _job_context(request: web.Request) -> dict[str, Any]:
    state = request.config_dict
    job = await run_db(state, jobs.get, job_id_of(request), own_viewer(request))
    events = await run_db(state, operations.last_events, job.id, EVENTS)
    said = [e.message for e in events if e.kind == "progress" and e.message]
    return {
        "job": job,
        "events": events,
        "finished": job.status in FINISHED,
        "progress_message": said[-1] if said else "",
        "retryable": job.status in operations.RETRYABLE,
        "submittable": job.type in {t.name for t in state[CONTAINER].registry.public()},
    }


@routes.get(
    "/jobs/{job_id}",
    name="home_job",
    role=Role.MEMBER,
    parameters=[JOB_ID],
    answers=PAGE,
    errors={404: "No such job of the user's"},
)
async def job_page(request: web.Request) -> web.Response:
    """One of the user's jobs: status, progress, result or error, events; cancel or retry."""
    context = await _job_context(request)
    job = context["job"]
    return render(
        request, "app/job.html", title=f"{job.type}", notice=notice_of(request), **context
    )


@routes.get(
    "/jobs/{job_id}/live",
    name="home_job_live",
    role=Role.MEMBER,
    parameters=[JOB_ID],
    answers=FRAGMENT,
    errors={404: "No such job of the user's"},
)
async def job_live(request: web.Request) -> web.Response:
    """The changing part of a job's page, as the page refreshes it until the job finishes."""
    return render(request, "app/_job.html", **await _job_context(request))


@routes.post(
    "/jobs/{job_id}/cancel",
    name="home_cancel_job",
    role=Role.MEMBER,
    parameters=[JOB_ID],
    answers={303: Answer("Back to the job's page", content_type=None)},
    errors={404: "No such job of the user's"},
)
async def cancel_job(request: web.Request) -> web.Response:
    """Cancel the job (a running one is asked to stop), then back to its page."""
    await form_of(request)
    job_id = job_id_of(request)
    state = request.config_dict
    container = state[CONTAINER]
    finished = container.metrics.finished
    try:
        job = await run_db(
            state,
            jobs.cancel,
            container.announcements,
            job_id,
            own_viewer(request),
            on_cancelled=lambda job: finished.labels(job.type, JobStatus.CANCELLED.value).inc(),
        )
    except ConflictError:
        _back(job_id, "finished")
    _back(job_id, "cancelled" if job.status == JobStatus.CANCELLED else "stopping")


@routes.post(
    "/jobs/{job_id}/retry",
    name="home_retry_job",
    role=Role.MEMBER,
    parameters=[JOB_ID],
    answers={303: Answer("Back to the job's page", content_type=None)},
    errors={404: "No such job of the user's"},
)
async def retry_job(request: web.Request) -> web.Response:
    """Give a failed or cancelled job a new attempt cycle (as `POST /v1/jobs/{id}/retry`),
    then back to its page."""
    await form_of(request)
    job_id = job_id_of(request)
    container = request.config_dict[CONTAINER]
    try:
        await run_db(
            request.config_dict,
            operations.retry,
            container.enqueuer,
            container.announcements,
            container.registry,
            job_id,
            own_viewer(request),
        )
    except ConflictError:
        job = await run_db(request.config_dict, jobs.get, job_id, own_viewer(request))
        _back(job_id, "unknown_type" if job.status in operations.RETRYABLE else "not_retryable")
    _back(job_id, "retried")


def _back(job_id: uuid.UUID, done: str) -> NoReturn:
    raise web.HTTPSeeOther(f"/app/jobs/{job_id}?done={done}")
