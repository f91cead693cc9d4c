"""Request and response bodies of the HTTP API (pydantic; also the OpenAPI schemas)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Collection
from typing import Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from conveyor.models import Job, JobStatus
from conveyor.registry import JobType
from conveyor.services.cursors import CURSOR_LENGTH
from conveyor.services.queues import QueueStats

#: The fields of a job that may be large, which a list leaves out unless asked for.
Content = Literal["payload", "result"]
CONTENT: frozenset[str] = frozenset({"payload", "result"})
#: How an RFC 3339 date-time begins (pydantic checks the rest, offset included).
RFC3339_START = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


class SubmitJob(BaseModel):
    """A job to run: its type and the payload that type declares."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=200, examples=["system.echo"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"hello": "world"}])
    run_at: AwareDatetime | None = Field(
        None,
        description="Run no earlier than this time (RFC 3339 with an offset); "
        "the job is `scheduled` until then.",
        examples=["2030-01-01T09:00:00Z"],
    )
    delay_seconds: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Run no earlier than this many seconds from now (instead of run_at).",
        examples=[30],
    )

    @field_validator("run_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        """Only RFC 3339 text: not a Unix time, which pydantic would also take."""
        if value is not None and not (isinstance(value, str) and RFC3339_START.match(value)):
            raise ValueError(
                "must be an RFC 3339 time with its offset, such as 2030-01-01T09:00:00Z"
            )
        return value

    @field_validator("delay_seconds", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        """A JSON number: not `true` or `"12"`, which pydantic would also take."""
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError("must be a number of seconds")
        return value


class JobErrorSummary(BaseModel):
    """The error of the job's last failed attempt, as a list gives it."""

    type: str = Field(
        description="The exception's class name, or `TimeLimitExceeded`, `WorkerLost`, "
        "`Cancelled`, `UnserializableResult`"
    )
    message: str


class JobError(JobErrorSummary):
    """The error of the job's last failed attempt."""

    traceback: str | None = Field(
        None,
        description="Where the job's code raised it, as Python prints a traceback (from the "
        "job's function on; the frames of the worker that called it are left out). Its end "
        "is kept if it is longer than CONVEYOR_MAX_TRACEBACK_BYTES. `null` for errors not "
        "raised in the job's code (a lost worker, a cancel, a payload that no longer "
        "validates) and for `RetryLater`",
    )


class JobOut(BaseModel):
    """A job as clients see it."""

    id: uuid.UUID
    type: str
    queue: str
    status: JobStatus = Field(description="Where the job is in its lifecycle")
    payload: dict[str, Any]
    result: Any = None
    error: JobError | None = None
    attempts: int = Field(description="Times the job started (retries and lost workers included)")
    max_retries: int = Field(
        description="Failed attempts the job may retry over its life; a retry of the job "
        "raises it by its type's retries"
    )
    worker_losses: int = Field(
        description="Attempts that ended because their worker died (or a service failed "
        "under them), since the job was submitted or last retried"
    )
    handbacks: int = Field(
        0,
        description="Attempts handed back unfinished by a stopping worker (they ran again): "
        "neither failures nor lost workers",
    )
    progress: float | None = None
    owner_id: uuid.UUID
    parent_id: uuid.UUID | None = Field(None, description="The job that submitted this one")
    idempotency_key: str | None = None
    cancel_requested: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    run_at: dt.datetime | None = Field(None, description="When the submitter asked it to run")
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    next_attempt_at: dt.datetime | None = Field(
        None, description="When a scheduled or retrying job is due"
    )
    url: str

    @staticmethod
    def _error(error: dict[str, Any] | None) -> Any:
        return JobError.model_validate(error) if error else None

    @classmethod
    def of(cls, job: Job, include: Collection[str] = CONTENT) -> Self:
        """The job as clients see it; of `payload` and `result`, those in `include` (the
        others are not read from the row)."""
        return cls(
            id=job.id,
            type=job.type,
            queue=job.queue,
            status=job.status,  # validated into a JobStatus
            payload=job.payload if "payload" in include else None,
            result=job.result if "result" in include else None,
            error=cls._error(job.error),
            attempts=job.attempts,
            worker_losses=job.worker_losses,
            handbacks=job.handbacks or 0,
            max_retries=job.max_retries,
            progress=job.progress,
            owner_id=job.owner_id,
            parent_id=job.parent_id,
            idempotency_key=job.idempotency_key,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            updated_at=job.updated_at,
            run_at=job.run_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            next_attempt_at=job.next_attempt_at,
            url=f"/v1/jobs/{job.id}",
        )


class JobItem(JobOut):
    """A job in a list: as `JobOut`, with `payload` and `result` only when asked for."""

    payload: dict[str, Any] | None = Field(  # type: ignore[assignment]
        None, description="Only with `include=payload`"
    )
    result: Any = Field(None, description="Only with `include=result`")
    error: JobErrorSummary | None = Field(  # type: ignore[assignment]
        None, description="Without its traceback: read the job at its `url` for that"
    )

    @staticmethod
    def _error(error: dict[str, Any] | None) -> Any:
        return JobErrorSummary(type=error["type"], message=error["message"]) if error else None

    omitted: list[Content] | None = Field(
        None,
        description="Fields asked for with `include` but left out, because with them this "
        "job alone would pass the response size limit: read them at its `url`",
    )


class JobPage(BaseModel):
    """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[JobItem]
    next_cursor: str | None = None


class PageWriter:
    """Writes the JSON of a `JobPage` one job at a time, within `max_bytes`.

    `take(job)` adds a job unless it would pass the limit; the first job is always taken,
    without the included fields that make it too large (listed in its `omitted`). Each job
    is written as soon as it is read, so a page of large jobs is never held twice.
    """

    def __init__(self, include: Collection[str], max_bytes: int) -> None:
        self.include = frozenset(include)
        self.items: list[bytes] = []
        # Room for the items: the limit less the page's frame with the longest cursor.
        frame = len(_page_json([], "x" * CURSOR_LENGTH))
        self.room = max_bytes - frame
        self.used = 0

    def take(self, job: Job) -> bool:
        item = self._item(job, self.include)
        size = len(item) + (1 if self.items else 0)  # the comma before it
        if self.used + size > self.room:
            if self.items:
                return False
            item = self._first_alone(job)
            size = len(item)
        self.items.append(item)
        self.used += size
        return True

    def body(self, next_cursor: str | None) -> bytes:
        return _page_json(self.items, next_cursor)

    def _first_alone(self, job: Job) -> bytes:
        """The first job, with as many of the included fields as fit (none at worst)."""
        for dropped in [{name} for name in sorted(self.include)] + [set(self.include)]:
            item = self._item(job, self.include - dropped, omitted=sorted(dropped))
            if len(item) <= self.room:
                break
        return item

    @staticmethod
    def _item(job: Job, include: frozenset[str], omitted: list[str] | None = None) -> bytes:
        out = JobItem.of(job, include)
        left_out = {name for name in CONTENT if name not in include}
        if omitted:
            out = out.model_copy(update={"omitted": omitted})
        else:
            left_out.add("omitted")
        return JobItem.__pydantic_serializer__.to_json(out, exclude=left_out)


def _page_json(items: list[bytes], next_cursor: str | None) -> bytes:
    cursor = b"null" if next_cursor is None else b'"' + next_cursor.encode() + b'"'
    return b'{"items":[' + b",".join(items) + b'],"next_cursor":' + cursor + b"}"


class JobTypeOut(BaseModel):
    name: str
    queue: str
    description: str
    max_retries: int
    time_limit_seconds: float | None
    payload_schema: dict[str, Any]

    @classmethod
    def of(cls, job_type: JobType) -> JobTypeOut:
        return cls(
            name=job_type.name,
            queue=job_type.queue,
            description=job_type.description,
            max_retries=job_type.retry.max_retries,
            time_limit_seconds=job_type.time_limit.total_seconds() if job_type.time_limit else None,
            payload_schema=job_type.payload.model_json_schema(),
        )


class JobTypeList(BaseModel):
    items: list[JobTypeOut]


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem: every error answer has this shape."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] = Field(default_factory=list)


class Health(BaseModel):
    """The process is alive."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Whether each dependency answered: `ok` or `failed` (the log has the error)."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(
        examples=[{"database": "ok", "schema": "ok", "broker": "ok", "redis": "ok"}]
    )


#: Most values of one list of a bulk filter (each is a query parameter of the database's).
MAX_FILTER_VALUES = 100


class JobFilterIn(BaseModel):
    """Which jobs a bulk operation acts on: every criterion given must hold, and at least one
    must be given. `limit` bounds how many one request changes."""

    model_config = ConfigDict(extra="forbid")

    status: list[JobStatus] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description="Only jobs in these statuses (by default every status the operation acts on)",
    )
    type: list[str] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description=f"Only jobs of these types (at most {MAX_FILTER_VALUES})",
    )
    queue: list[str] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description=f"Only jobs of these queues (at most {MAX_FILTER_VALUES})",
    )
    owner: str | None = Field(
        None, description="Only the jobs of this user (an email or a user id)", max_length=320
    )
    created_before: AwareDatetime | None = Field(None, description="Created before this time")
    created_after: AwareDatetime | None = Field(None, description="Created at or after this time")
    limit: int = Field(
        1000,
        ge=1,
        le=10_000,
        description="Most jobs changed by this request; call again while `more` is true",
    )


class BulkOut(BaseModel):
    """What a bulk operation did."""

    count: int = Field(description="Jobs changed")
    more: bool = Field(description="Matching jobs are left (the limit was reached): call again")
    cancel_requested: int = Field(
        0, description="Of `count`, running jobs asked to stop (a cancel)"
    )
    skipped: int = Field(0, description="Jobs of a type this server does not know (a retry)")


class ErrorGroupOut(BaseModel):
    """The failed jobs of one job type that raised the same kind of error."""

    type: str = Field(description="The job type")
    error_type: str | None = Field(
        description="The error's type (the exception's class); null: the error named none"
    )
    count: int = Field(description="Failed jobs in the group")
    first_seen: dt.datetime = Field(description="When the group's oldest job failed")
    last_seen: dt.datetime = Field(description="When its newest job failed")
    sample_job_id: uuid.UUID = Field(description="The group's newest job")
    message: str | None = Field(description="The sample job's error message")


class ErrorGroupList(BaseModel):
    """The error groups, the most recently seen first."""

    items: list[ErrorGroupOut]


class ErrorGroupIn(BaseModel):
    """Which error group a bulk action acts on, and how many of its jobs at most."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=200, description="The job type")
    error_type: str | None = Field(
        max_length=200, description="The error's type, as the group gives it (null included)"
    )
    limit: int = Field(
        1000,
        ge=1,
        le=10_000,
        description="Most jobs changed by this request; call again while `more` is true",
    )
    up_to: AwareDatetime | None = Field(
        None,
        description="Only the jobs that failed at or before this time: the group's `last_seen` "
        "as you read it, so that jobs failing after you looked are left alone",
    )


class QueueOut(BaseModel):
    """One queue's figures, from the database (the same on RabbitMQ and Redis)."""

    name: str
    waiting: int = Field(description="Queued, or retrying and due: a worker may start them now")
    scheduled: int = Field(description="Delayed, or retrying later")
    running: int
    failed: int = Field(description="Failed jobs still kept")
    oldest_waiting_seconds: float = Field(
        description="How long the oldest waiting job has been due (0: none waits)"
    )
    paused: bool = Field(description="Its workers take none of its jobs (submissions still land)")
    paused_at: dt.datetime | None = None
    pause_reason: str | None = None
    consumers: int = Field(description="Live worker processes that consume the queue")
    consumer_threads: int = Field(description="Their worker threads together")

    @classmethod
    def of(cls, stats: QueueStats) -> Self:
        return cls(
            name=stats.queue,
            waiting=stats.waiting,
            scheduled=stats.scheduled,
            running=stats.running,
            failed=stats.failed or 0,
            oldest_waiting_seconds=round(stats.oldest_waiting_seconds, 3),
            paused=stats.paused,
            paused_at=stats.paused_at,
            pause_reason=stats.pause_reason,
            consumers=stats.consumers or 0,
            consumer_threads=stats.consumer_threads or 0,
        )


class QueueList(BaseModel):
    items: list[QueueOut]


class PauseIn(BaseModel):
    """Why the queue is paused (optional; kept with the pause and in the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=200)


class PauseOut(BaseModel):
    """What a pause or a resume did."""

    queue: str
    paused: bool = Field(description="Whether the queue is paused now")
    changed: bool = Field(description="False: it was paused (or running) already")
    published: int = Field(0, description="Waiting jobs published again by a resume")
