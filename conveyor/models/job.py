"""Jobs (the source of truth, and the outbox) and their event history."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.ids import uuid7
from conveyor.models.base import Base, BigIntKey, JSONType, UTCDateTime, utcnow


class JobStatus(enum.StrEnum):
    """Where a job is in its lifecycle. The only place status names are written."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Final states: nothing moves a job out of them.
FINISHED_ORDER = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
FINISHED = frozenset(FINISHED_ORDER)
#: Not started (again) yet: a cancel ends these at once.
WAITING = (JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.RETRYING)
#: States that need a message on the broker (the outbox); a scheduled job joins when due.
OUTBOX = (JobStatus.QUEUED, JobStatus.RETRYING)


#: Not started (again) yet, whether due or not.
UNSTARTED = (JobStatus.SCHEDULED, *OUTBOX)
#: When a job not started yet is (or was) due: its retry time, else its `run_at`, else its
#: submission. Spelled as the index spells it, so queries match the index.
DUE_SQL = "coalesce(next_attempt_at, run_at, created_at)"


def _in(statuses: tuple[JobStatus, ...]) -> str:
    """`status IN (...)` for the partial indexes and the CHECK constraint."""
    return "status IN (" + ", ".join(f"'{s.value}'" for s in statuses) + ")"


class Job(Base):
    """One unit of work. Its row is the truth: messages only say "look at job X"."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in(tuple(JobStatus)), name="status"),
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_type_id", "type", "id"),
        Index("ix_jobs_parent_id", "parent_id"),
        Index(
            "uq_jobs_owner_id_idempotency_key",
            "owner_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
        # The outbox sweep: unpublished or long-published jobs still waiting to run.
        Index(
            "ix_jobs_pending_published_at",
            "published_at",
            postgresql_where=text(_in(OUTBOX)),
            sqlite_where=text(_in(OUTBOX)),
        ),
        # The reconciler: running jobs whose lease ran out.
        Index(
            "ix_jobs_running_lease_expires_at",
            "lease_expires_at",
            postgresql_where=text(_in((JobStatus.RUNNING,))),
            sqlite_where=text(_in((JobStatus.RUNNING,))),
        ),
        # Retention: the finished jobs that are old enough to delete, oldest first.
        Index(
            "ix_jobs_finished_finished_at",
            "finished_at",
            postgresql_where=text(_in(tuple(FINISHED_ORDER))),
            sqlite_where=text(_in(tuple(FINISHED_ORDER))),
        ),
        # Queue depths and the oldest waiting job per queue (`services.queues`): the jobs
        # not started yet, by queue, status and when each is (or was) due. On PostgreSQL it
        # also holds the columns `DUE_SQL` reads, so the figures are read by index only (it
        # cannot match the expression itself for that): on a deep backlog, a few ms, not the
        # hundreds of ms of a visit to every waiting row.
        Index(
            "ix_jobs_unstarted_queue_status_due",
            "queue",
            "status",
            text(DUE_SQL),
            postgresql_where=text(_in(UNSTARTED)),
            postgresql_include=["next_attempt_at", "run_at", "created_at"],
            sqlite_where=text(_in(UNSTARTED)),
        ),
        # The error groups (`services.error_groups`): failed jobs by type and error type,
        # newest last, read by index only.
        Index(
            "ix_jobs_failed_type_error_type",
            "type",
            "error_type",
            "finished_at",
            "id",
            postgresql_where=text(_in((JobStatus.FAILED,))),
            sqlite_where=text(_in((JobStatus.FAILED,))),
        ),
        # The sweeper's promotion of delayed jobs that became due.
        Index(
            "ix_jobs_scheduled_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text(_in((JobStatus.SCHEDULED,))),
            sqlite_where=text(_in((JobStatus.SCHEDULED,))),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    type: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED.value)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    result: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    #: `error["type"]` (the exception's class), written with `error`: the error groups
    #: group on it, through an index (see `error_type_of`).
    error_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_losses: Mapped[int] = mapped_column(Integer, default=0)
    #: Runs handed back unfinished by a stopping worker: neither failures nor lost workers.
    handbacks: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    #: The job whose function submitted this one (`ctx.submit`), if any.
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: When the submitter asked the job to run (`run_at` / `delay_seconds`), if it did.
    run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When a scheduled or retrying job is due.
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


#: The longest error type kept in `error_type` (the rest is cut).
MAX_ERROR_TYPE = 200


def error_type_of(error: dict[str, Any] | None) -> str | None:
    """The `error_type` column of a job whose `error` is `error`: its `type`, cut to fit."""
    if not error:
        return None
    kind = error.get("type")
    return None if kind is None else str(kind)[:MAX_ERROR_TYPE]


class JobEventKind(enum.StrEnum):
    """What a row of a job's history records."""

    STATUS = "status"
    PROGRESS = "progress"


class JobEvent(Base):
    """One transition or progress step of a job; the history `GET …/events` streams."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    #: The traceback of the failed attempt a `retrying` or `failed` event records, if any.
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)


#: The Core tables, for the services' guarded UPDATEs and bulk INSERTs.
jobs_t = cast(Table, Job.__table__)
events_t = cast(Table, JobEvent.__table__)
