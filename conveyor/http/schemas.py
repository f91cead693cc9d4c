"""Request and response bodies of the HTTP API (pydantic; also the OpenAPI schemas)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from conveyor.models import Job
from conveyor.registry import JobType


class SubmitJob(BaseModel):
    """A job to run: its type and the payload that type declares."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=200, examples=["system.echo"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"hello": "world"}])


class JobError(BaseModel):
    type: str
    message: str


class JobOut(BaseModel):
    """A job as clients see it."""

    id: uuid.UUID
    type: str
    queue: str
    status: str = Field(description="queued | running | retrying | succeeded | failed | cancelled")
    payload: dict[str, Any]
    result: Any = None
    error: JobError | None = None
    attempts: int = Field(description="Times the job started (retries and lost workers included)")
    max_retries: int
    worker_losses: int = Field(description="Attempts that ended because their worker died")
    progress: float | None = None
    owner_id: uuid.UUID
    idempotency_key: str | None = None
    cancel_requested: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    next_attempt_at: dt.datetime | None = None
    url: str

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            type=job.type,
            queue=job.queue,
            status=job.status,
            payload=job.payload,
            result=job.result,
            error=JobError(**job.error) if job.error else None,
            attempts=job.attempts,
            worker_losses=job.worker_losses,
            max_retries=job.max_retries,
            progress=job.progress,
            owner_id=job.owner_id,
            idempotency_key=job.idempotency_key,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            updated_at=job.updated_at,
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
