"""Routes of /v1/jobs: submit, read (and wait), list, cancel, retry; job types."""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic_core import from_json

from conveyor.errors import BadRequestError, InvalidRequestError
from conveyor.http.api.params import (
    JOB_ID,
    bounded_int,
    idempotency_key,
    is_finished,
    job_id_of,
    next_page_link,
    page_limit,
    respond,
    routes,
)
from conveyor.http.keys import CONTAINER, HELD, METRICS, USER
from conveyor.http.routes import Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.http.schemas import (
    CONTENT,
    JobOut,
    JobPage,
    JobTypeList,
    JobTypeOut,
    PageWriter,
    SubmitJob,
)
from conveyor.models import Job, JobStatus, Role, Scope
from conveyor.models.base import utcnow
from conveyor.services import jobs, operations
from conveyor.services.cursors import Cursors
from conveyor.settings import Settings

if TYPE_CHECKING:
    from conveyor.http.openapi import Context

#: The polling interval suggested for an unfinished job; a scheduled one's is its wait, capped.
POLL_SECONDS = 1
MAX_POLL_SECONDS = 3600
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)

UNFINISHED_HEADERS = {"Retry-After": "Seconds to wait before polling again (unfinished jobs)"}


def submission_schema(context: Context) -> dict[str, Any]:
    """The body of POST /v1/jobs: one variant per job type users may submit, with its payload,
    and the delay fields of `SubmitJob` (with the real limit of `delay_seconds`)."""
    limit = context.settings.max_delay_seconds
    fields = SubmitJob.model_fields
    timing = {
        "run_at": {
            "type": "string",
            "format": "date-time",
            "description": f"{fields['run_at'].description} At most {limit:.0f} seconds ahead.",
        },
        "delay_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": limit,
            "description": fields["delay_seconds"].description,
        },
    }
    variants = []
    for job_type in context.registry.public():
        name = f"Payload_{job_type.name.replace('.', '_')}"
        variants.append(
            {
                "type": "object",
                "title": job_type.name,
                "description": job_type.description,
                "required": ["type"],
                "additionalProperties": False,
                "not": {"required": ["run_at", "delay_seconds"]},
                "properties": {
                    "type": {"const": job_type.name},
                    "payload": context.components.model(job_type.payload, name),
                    **timing,
                },
            }
        )
    return {"oneOf": variants} if variants else context.components.model(SubmitJob)


def _seconds(value: str | None, field: str, upper: float) -> float:
    if value is None or value == "":
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= upper:
        raise InvalidRequestError(
            f"{field} must be a number of seconds from 0 to {upper:g}",
            errors=[{"field": field, "message": f"must be between 0 and {upper:g}"}],
        )
    return seconds


def _poll_after(job: Job) -> str:
    """`Retry-After` for an unfinished job: soon, or when a scheduled job comes due."""
    if job.status == JobStatus.SCHEDULED and job.next_attempt_at is not None:
        wait = (job.next_attempt_at - utcnow()).total_seconds()
        return str(min(max(math.ceil(wait), POLL_SECONDS), MAX_POLL_SECONDS))
    return str(POLL_SECONDS)


async def _wait(request: web.Request, job: Job, seconds: float, *, until_finished: bool) -> Job:
    """The job once it changes status (or finishes), or as it is after `seconds`.

    The job's feed, shared with every request and stream watching it in this process, reads
    the row once after this request joins (so no change since the first read is missed) and
    again after each announced change of status; while the announcement channel is down,
    every second. At the deadline the row is read again, in case a notice was lost.
    """
    if seconds <= 0 or is_finished(job):
        return job
    request[HELD] = "wait"  # a long poll: not a request latency (see middleware.observe)
    initial = job.status
    state = request.config_dict
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with state[CONTAINER].feeds.watching(job.id) as feed:
        fresh = feed.refresh()
        while True:
            seen = feed.row_since(fresh)
            if seen is not None:
                if is_finished(seen) or (not until_finished and seen.status != initial):
                    return seen
            elif feed.finished or feed.failed:
                break  # the feed cannot say (the job is gone, or it failed): read it below
            remaining = deadline - loop.time()
            if remaining <= 0 or not await feed.changed(remaining):
                break
    return await run_db(state, jobs.get, job.id, request[USER])


@routes.post(
    "/jobs",
    role=Role.MEMBER,
    scope=Scope.JOBS_WRITE,
    summary="Submit a job",
    body=submission_schema,
    parameters=[
        idempotency_key(
            "Makes a retried submission safe: the same key and request return the same job "
            "(1 to 255 printable ASCII characters; each user has their own keys)"
        ),
        Parameter(
            "Prefer",
            "header",
            {"type": "string", "examples": ["wait=10"]},
            lambda settings: (
                "`wait=N`: hold the answer up to N seconds (at most "
                f"{settings.max_wait_seconds:g}) until the job finishes, then answer 200 with it"
            ),
        ),
    ],
    answers={
        202: Answer(
            "Queued (or, with Idempotent-Replayed, the job of an earlier identical request); "
            "poll the Location",
            JobOut,
            headers={
                "Location": "The job's URL",
                **UNFINISHED_HEADERS,
                "Idempotent-Replayed": "`true` when an earlier job was returned",
                "Preference-Applied": "`wait=N`: how long the answer was held at most",
            },
        ),
        200: Answer(
            "Finished within Prefer: wait",
            JobOut,
            headers={"Location": "The job's URL", "Preference-Applied": "`wait=N`"},
        ),
    },
    errors={
        400: "Malformed JSON, or a bad Idempotency-Key",
        409: "The same Idempotency-Key is in flight; retry shortly",
        413: "The body is larger than the server accepts",
        422: "Unknown type, invalid payload, a bad run_at or delay_seconds, or an "
        "Idempotency-Key reused with another request",
    },
)
async def submit_job(request: web.Request) -> web.Response:
    """Validate and queue a job: 202 with its URL, or 200 with the finished job when a
    `Prefer: wait=N` was given and it ended in time."""
    state = request.config_dict  # a new proxy on every access: taken once
    container = state[CONTAINER]
    body = await request.read()
    try:  # strict JSON: no NaN or Infinity (a 1e400 that parses as one is refused later)
        document = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    submission = SubmitJob.model_validate(document)
    submissions = container.submissions
    new = submissions.build(
        container.registry.submittable(submission.type),
        submission.payload,
        owner_id=request[USER].id,
        idempotency_key=request.headers.get("Idempotency-Key"),
        run_at=submission.run_at,
        delay=submission.delay_seconds,
    )
    submitted = await submissions.asubmit(new)
    job, created = submitted.job, submitted.created
    headers = {"Location": f"/v1/jobs/{job.id}", "Retry-After": _poll_after(job)}
    if created:
        state[METRICS].submitted.labels(job.type).inc()
    else:
        headers["Idempotent-Replayed"] = "true"
    match = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
    if match:
        wait = min(float(match.group(1)), container.settings.max_wait_seconds)
        job = await _wait(request, job, wait, until_finished=True)
        headers["Preference-Applied"] = f"wait={wait:g}"
        if is_finished(job):
            return respond(JobOut.of(job), 200, headers)
    return respond(JobOut.of(job), 202, headers)


@routes.get(
    "/jobs/{job_id}",
    role=Role.MEMBER,
    scope=Scope.JOBS_READ,
    summary="Read a job (optionally waiting for a change)",
    parameters=[
        JOB_ID,
        Parameter(
            "wait",
            "query",
            lambda settings: {
                "type": "number",
                "minimum": 0,
                "maximum": settings.max_wait_seconds,
                "default": 0,
            },
            "Seconds to hold the answer until the status changes (or the job finishes)",
        ),
        Parameter(
            "until",
            "query",
            {"enum": ["change", "finished"], "default": "change"},
            "What `wait` waits for",
        ),
    ],
    answers={200: Answer("The job", JobOut, headers=UNFINISHED_HEADERS)},
    errors={404: "No such job (or another member's)", 422: "A bad `wait` or `until`"},
)
async def get_job(request: web.Request) -> web.Response:
    """The job; `?wait=N` holds the answer until its status changes (or with
    `until=finished`, until it finishes) or N seconds pass."""
    wait = _seconds(
        request.query.get("wait"), "wait", request.config_dict[CONTAINER].settings.max_wait_seconds
    )
    until = request.query.get("until", "change")
    if until not in ("change", "finished"):
        raise InvalidRequestError(
            "until must be 'change' or 'finished'",
            errors=[{"field": "until", "message": "one of: change, finished"}],
        )
    job = await run_db(request.config_dict, jobs.get, job_id_of(request), request[USER])
    job = await _wait(request, job, wait, until_finished=until == "finished")
    headers = {} if is_finished(job) else {"Retry-After": _poll_after(job)}
    return respond(JobOut.of(job), headers=headers)


def _printable(values: list[str], field: str) -> list[str]:
    if any(not v.isprintable() for v in values):
        raise InvalidRequestError(
            f"{field} has unprintable characters",
            errors=[{"field": field, "message": "unprintable characters"}],
        )
    return values


def _parent(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequestError(
            "parent must be a job id", errors=[{"field": "parent", "message": "not a job id"}]
        ) from None


def _list_param(request: web.Request, name: str) -> list[str]:
    values: list[str] = []
    for raw in request.query.getall(name, []):
        values.extend(v.strip() for v in raw.split(",") if v.strip())
    return values


def _include(request: web.Request) -> frozenset[str]:
    include = _list_param(request, "include")
    unknown = [name for name in include if name not in CONTENT]
    if unknown:
        raise InvalidRequestError(
            f"include {unknown[0]!r}: a list may include only payload and result",
            errors=[{"field": "include", "message": "must be one of: payload, result"}],
        )
    return frozenset(include)


def _limit(request: web.Request, settings: Settings, include: frozenset[str]) -> int:
    """The page size asked for, within the cap: a smaller one when jobs carry `include`."""
    cap = settings.max_page_size
    default = settings.default_page_size
    if include:
        cap = min(cap, settings.max_include_page_size)
        default = min(default, cap)
    limit = bounded_int(request.query.get("limit", str(default)), 0, cap + 1)
    if 1 <= limit <= cap:
        return limit
    if include:
        with_include = f"include={','.join(sorted(include))}"
        raise InvalidRequestError(
            f"limit must be an integer from 1 to {cap} with {with_include} "
            f"(CONVEYOR_MAX_INCLUDE_PAGE_SIZE; up to {settings.max_page_size} without include)",
            errors=[{"field": "limit", "message": f"1 to {cap} with {with_include}"}],
        )
    raise InvalidRequestError(
        f"limit must be an integer from 1 to {cap}",
        errors=[{"field": "limit", "message": f"1 to {cap}"}],
    )


@routes.get(
    "/jobs",
    role=Role.MEMBER,
    scope=Scope.JOBS_READ,
    summary="List jobs, newest first",
    parameters=[
        Parameter(
            "status",
            "query",
            {"type": "array", "items": {"type": "string", "enum": [s.value for s in JobStatus]}},
            "Only jobs in these statuses: comma-separated, or the parameter repeated",
            comma_separated=True,
        ),
        Parameter(
            "type",
            "query",
            {"type": "array", "items": {"type": "string"}},
            "Only jobs of these types: comma-separated, or the parameter repeated",
            comma_separated=True,
        ),
        page_limit(
            lambda settings: (
                f"Jobs per page: at most {settings.max_page_size}, or "
                f"{min(settings.max_include_page_size, settings.max_page_size)} with `include` "
                f"(then by default at most that). A page ends sooner when the next job would "
                f"take the body past {settings.max_response_bytes} bytes"
            ),
        ),
        Parameter(
            "include",
            "query",
            {"type": "array", "items": {"type": "string", "enum": sorted(CONTENT)}},
            "Also give each job's `payload` or `result` (left out by default): "
            "comma-separated, or the parameter repeated",
            comma_separated=True,
        ),
        Parameter(
            "parent",
            "query",
            {"type": "string", "format": "uuid"},
            "Only the jobs this job submitted (its children)",
        ),
        Parameter(
            "cursor",
            "query",
            {"type": "string"},
            "The `next_cursor` of the last page, with the same `status`, `type` and `parent`",
        ),
    ],
    answers={
        200: Answer(
            "A page of jobs, without their payload and result unless `include` asks for them; "
            "shorter than `limit` when the next job would pass the response size limit",
            JobPage,
            headers={"Link": '`<url>; rel="next"`: the full URL of the next page'},
        )
    },
    errors={
        400: "A cursor this server did not issue, or issued for other filters",
        422: "A bad `status`, `type`, `parent`, `include` or `limit` (at most "
        "CONVEYOR_MAX_INCLUDE_PAGE_SIZE with `include`)",
    },
)
async def list_jobs(request: web.Request) -> web.Response:
    """Jobs newest first, filtered by `status`, `type` and `parent`, by `cursor` pages of
    `limit`; each job without its payload and result unless `include` names them. A page
    ends before the job that would take it past `CONVEYOR_MAX_RESPONSE_BYTES`."""
    settings = request.config_dict[CONTAINER].settings
    statuses = _list_param(request, "status")
    unknown = [s for s in statuses if s not in {s.value for s in JobStatus}]
    if unknown:
        allowed = ", ".join(s.value for s in JobStatus)
        raise InvalidRequestError(
            f"unknown status {unknown[0]!r}",
            errors=[{"field": "status", "message": f"must be one of: {allowed}"}],
        )
    include = _include(request)
    limit = _limit(request, settings, include)
    writer = PageWriter(include, settings.max_response_bytes)
    page = await run_db(
        request.config_dict,
        jobs.list_jobs,
        request[USER],
        Cursors.of(settings),
        statuses=statuses,
        types=_printable(_list_param(request, "type"), "type"),
        parent_id=_parent(request.query.get("parent")),
        cursor=request.query.get("cursor") or None,
        limit=limit,
        include=include,
        take=writer.take,
    )
    return web.Response(
        body=writer.body(page.next_cursor),
        headers=next_page_link(request, settings, page.next_cursor),
        content_type="application/json",
    )


@routes.post(
    "/jobs/{job_id}/cancel",
    role=Role.MEMBER,
    scope=Scope.JOBS_WRITE,
    summary="Cancel a job",
    parameters=[JOB_ID],
    answers={
        200: Answer("Cancelled (now, or already)", JobOut),
        202: Answer(
            "Running, and asked to stop; poll the Location until it is `cancelled` (or finished)",
            JobOut,
            headers={"Location": "The job's URL", **UNFINISHED_HEADERS},
        ),
    },
    errors={404: "No such job (or another member's)", 409: "It already succeeded or failed"},
)
async def cancel_job(request: web.Request) -> web.Response:
    """Cancel: a waiting job at once (200); a running one is asked to stop (202, with the
    job's Location to poll and Retry-After)."""
    state = request.config_dict
    finished = state[CONTAINER].metrics.finished
    job = await run_db(
        state,
        jobs.cancel,
        state[CONTAINER].announcements,
        job_id_of(request),
        request[USER],
        on_cancelled=lambda job: finished.labels(job.type, JobStatus.CANCELLED.value).inc(),
    )
    if is_finished(job):
        return respond(JobOut.of(job), 200)
    headers = {"Location": f"/v1/jobs/{job.id}", "Retry-After": str(POLL_SECONDS)}
    return respond(JobOut.of(job), 202, headers)


@routes.post(
    "/jobs/{job_id}/retry",
    role=Role.MEMBER,
    scope=Scope.JOBS_WRITE,
    summary="Retry a failed or cancelled job",
    parameters=[JOB_ID],
    answers={
        202: Answer(
            "Queued again: a new attempt cycle of the same job; poll the Location",
            JobOut,
            headers={"Location": "The job's URL", **UNFINISHED_HEADERS},
        ),
    },
    errors={
        404: "No such job (or another member's)",
        409: "The job is not failed or cancelled (the detail says its status), or its type "
        "is not known to this server",
    },
)
async def retry_job(request: web.Request) -> web.Response:
    """Give a `failed` or `cancelled` job a new attempt cycle: same id, attempts go on
    counting, its retries renewed; 202 with the job, queued."""
    container = request.config_dict[CONTAINER]
    job = await run_db(
        request.config_dict,
        operations.retry,
        container.enqueuer,
        container.announcements,
        container.registry,
        job_id_of(request),
        request[USER],
    )
    headers = {"Location": f"/v1/jobs/{job.id}", "Retry-After": str(POLL_SECONDS)}
    return respond(JobOut.of(job), 202, headers)


@routes.get(
    "/job-types",
    role=Role.MEMBER,
    scope=Scope.JOBS_READ,
    summary="List job types",
    answers={
        200: Answer(
            "Every job type users may submit, with its queue, limits and payload schema",
            JobTypeList,
        )
    },
)
async def job_types(request: web.Request) -> web.Response:
    """Every job type users may submit (not Conveyor's internal ones) with its queue, limits
    and payload JSON Schema."""
    registry = request.config_dict[CONTAINER].registry
    return respond(JobTypeList(items=[JobTypeOut.of(t) for t in registry.public()]))
