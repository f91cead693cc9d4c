"""Request and response bodies of the HTTP API (pydantic; also the OpenAPI schemas)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from conveyor.models import Job, JobStatus
from conveyor.registry import JobType

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


class JobError(BaseModel):
    type: str
    message: str


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
    max_retries: int
    worker_losses: int = Field(description="Attempts that ended because their worker died")
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

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            type=job.type,
            queue=job.queue,
            status=job.status,  # validated into a JobStatus
            payload=job.payload,
            result=job.result,
            error=JobError(**job.error) if job.error else None,
            attempts=job.attempts,
            worker_losses=job.worker_losses,
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


class JobPage(BaseModel):
    """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[JobOut]
    next_cursor: str | None = None


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
    """Whether each dependency answered: `ok`, or the error."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(examples=[{"database": "ok", "broker": "ok", "redis": "ok"}])
