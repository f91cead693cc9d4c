"""The job lifecycle: submit, read, list, cancel, and the guarded worker transitions.

The job row is the truth and the outbox: a message only says "run job X", and every
transition is a guarded UPDATE, so a duplicate or late message never moves a finished job.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Table, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import BadRequestError, ConflictError, InvalidRequestError, NotFoundError
from conveyor.ids import uuid7
from conveyor.models import Job, JobEvent, JobStatus, Role, User
from conveyor.models.base import utcnow
from conveyor.models.job import FINISHED, PENDING
from conveyor.services.direct import direct, postgres_engine

logger = logging.getLogger(__name__)

jobs_t = cast(Table, Job.__table__)
events_t = cast(Table, JobEvent.__table__)


@dataclass(frozen=True)
class JobMessage:
    """What goes on the broker for a job: its id, type and queue, and when to run it."""

    job_id: uuid.UUID
    type: str
    queue: str
    delay_ms: int = 0


class Enqueuer(Protocol):
    """The services' one way to the broker."""

    def publish(self, messages: Sequence[JobMessage]) -> None:
        """Publish and wait for the broker's confirmation; raises when it is unreachable."""

    def publish_soon(self, message: JobMessage) -> None:
        """Hand a message to the background publishers; never blocks, may drop (the sweeper
        publishes whatever was not confirmed)."""

    def waiting(self, queue: str) -> int | None:
        """Messages waiting in the broker's queue (None when the broker cannot tell)."""

    def take_confirmed(self) -> list[uuid.UUID]:
        """Ids of jobs whose `publish_soon` was confirmed since the last call."""


class Notifier(Protocol):
    """Wakes whoever waits on a job's status (see `conveyor.events`)."""

    def publish(self, job_id: uuid.UUID, status: str) -> None: ...


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


def request_hash(job_type: str, payload: dict[str, Any]) -> str:
    """Fingerprint of a submission, to tell a replay from a different request."""
    canonical = json.dumps([job_type, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE matched."""
    return cast(CursorResult[Any], result).rowcount


def _event(
    job_id: uuid.UUID,
    status: str,
    attempt: int,
    now: dt.datetime,
    *,
    kind: str = "status",
    progress: float | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "at": now,
        "kind": kind,
        "status": status,
        "attempt": attempt,
        "progress": progress,
        "message": message[:1000] if message else None,
    }


# --- idempotency-key locks ---------------------------------------------------------------

_local_keys: set[tuple[uuid.UUID, str]] = set()
_local_keys_lock = threading.Lock()


def _advisory_key_lock(session: Session, owner_id: uuid.UUID, key: str) -> None:
    """On PostgreSQL, hold `key` until the transaction ends, across processes."""
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(f"{owner_id}:{key}".encode()).digest()
        lock_id = int.from_bytes(digest[:8], "big", signed=True)
        if not session.scalar(select(func.pg_try_advisory_xact_lock(lock_id))):
            raise _in_flight()


@contextmanager
def _local_key_lock(owner_id: uuid.UUID, key: str) -> Iterator[None]:
    """Hold `key` in this process until after the commit (SQLite: one process)."""
    with _local_keys_lock:
        if (owner_id, key) in _local_keys:
            raise _in_flight()
        _local_keys.add((owner_id, key))
    try:
        yield
    finally:
        with _local_keys_lock:
            _local_keys.discard((owner_id, key))


def _in_flight() -> ConflictError:
    return ConflictError(
        "a request with this Idempotency-Key is still being processed; retry later",
        errors=[{"field": "Idempotency-Key", "message": "request in flight"}],
    )


# --- API side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    """A validated submission, ready to be written."""

    job_type: str
    queue: str
    payload: dict[str, Any]
    max_retries: int
    owner_id: uuid.UUID
    idempotency_key: str | None = None


def submit(db: sessionmaker[Session], new: NewJob) -> tuple[Job, bool]:
    """Write a queued job (and its first event) in one transaction.

    Returns the job and whether it was created; with an idempotency key already used for the
    same request, the earlier job comes back instead (a different request is a 422).
    """
    key = new.idempotency_key
    if key is None:
        with transaction(db) as session:
            return _insert(session, [new])[0], True
    with _local_key_lock(new.owner_id, key), transaction(db) as session:
        _advisory_key_lock(session, new.owner_id, key)
        existing = session.scalars(
            select(Job).where(Job.owner_id == new.owner_id, Job.idempotency_key == key)
        ).first()
        if existing is None:
            return _insert(session, [new])[0], True
        if existing.request_hash != request_hash(new.job_type, new.payload):
            raise InvalidRequestError(
                "this Idempotency-Key was already used with a different request",
                errors=[{"field": "Idempotency-Key", "message": "reused key"}],
            )
        return existing, False


def submit_many(db: sessionmaker[Session], batch: Sequence[NewJob]) -> list[Job]:
    """Write several jobs without idempotency keys in one transaction (one commit).

    On PostgreSQL that is a single statement over arrays (jobs and their first events), so a
    batch costs one round trip whatever its size.
    """
    if any(new.idempotency_key is not None for new in batch):
        raise ValueError("jobs with an idempotency key go through submit()")
    engine = postgres_engine(db)
    if engine is not None:
        rows = _rows(batch)
        direct(engine).execute(
            _INSERT_PG,
            {
                "ids": [r["id"] for r in rows],
                "types": [r["type"] for r in rows],
                "queues": [r["queue"] for r in rows],
                "payloads": [json.dumps(r["payload"]) for r in rows],
                "max_retries": [r["max_retries"] for r in rows],
                "owners": [r["owner_id"] for r in rows],
                "now": rows[0]["created_at"],
            },
        )
        return [Job(**row) for row in rows]
    with transaction(db) as session:
        return _insert(session, batch)


_INSERT_PG = """
WITH inserted AS (
    INSERT INTO jobs (id, type, queue, status, payload, attempts, worker_losses, max_retries,
        owner_id, cancel_requested, created_at, updated_at)
    SELECT id, type, queue, 'queued', payload::jsonb, 0, 0, max_retries, owner_id, false,
        %(now)s::timestamptz, %(now)s::timestamptz
    FROM unnest(%(ids)s::uuid[], %(types)s::varchar[], %(queues)s::varchar[],
        %(payloads)s::text[], %(max_retries)s::integer[], %(owners)s::uuid[])
        AS t(id, type, queue, payload, max_retries, owner_id)
    RETURNING id
)
INSERT INTO job_events (job_id, at, kind, status, attempt)
SELECT id, %(now)s::timestamptz, 'status', 'queued', 0 FROM inserted
"""


def _insert(session: Session, batch: Sequence[NewJob]) -> list[Job]:
    rows = _rows(batch)
    session.execute(insert(jobs_t), rows)
    now = rows[0]["created_at"]
    session.execute(insert(events_t), [_event(r["id"], JobStatus.QUEUED, 0, now) for r in rows])
    return [Job(**row) for row in rows]


def _rows(batch: Sequence[NewJob]) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "id": uuid7(),
            "type": new.job_type,
            "queue": new.queue,
            "status": JobStatus.QUEUED.value,
            "payload": new.payload,
            "result": None,
            "error": None,
            "attempts": 0,
            "worker_losses": 0,
            "max_retries": new.max_retries,
            "progress": None,
            "owner_id": new.owner_id,
            "idempotency_key": new.idempotency_key,
            "request_hash": request_hash(new.job_type, new.payload)
            if new.idempotency_key
            else None,
            "cancel_requested": False,
            "worker": None,
            "created_at": now,
            "updated_at": now,
            "published_at": None,
            "started_at": None,
            "finished_at": None,
            "next_attempt_at": None,
            "lease_expires_at": None,
        }
        for new in batch
    ]


def _visible(job: Job | None, viewer: User) -> Job:
    if job is None or (viewer.role != Role.ADMIN and job.owner_id != viewer.id):
        raise NotFoundError("no such job")
    return job


def get(db: sessionmaker[Session], job_id: uuid.UUID, viewer: User) -> Job:
    """The job, if `viewer` may see it (members see their own jobs only)."""
    with db() as session:
        return _visible(session.get(Job, job_id), viewer)


def encode_cursor(job_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(job_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return uuid.UUID(bytes=raw)
    except (binascii.Error, ValueError):
        raise BadRequestError(
            "invalid cursor", errors=[{"field": "cursor", "message": "not a cursor we issued"}]
        ) from None


def list_jobs(
    db: sessionmaker[Session],
    viewer: User,
    *,
    statuses: Sequence[str] = (),
    types: Sequence[str] = (),
    cursor: str | None = None,
    limit: int = 50,
) -> Page:
    """Newest first, by keyset pagination on the time-ordered id."""
    query = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    if viewer.role != Role.ADMIN:
        query = query.where(Job.owner_id == viewer.id)
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if types:
        query = query.where(Job.type.in_(types))
    if cursor:
        query = query.where(Job.id < decode_cursor(cursor))
    with db() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1].id) if more and rows else None)


def cancel(db: sessionmaker[Session], notifier: Notifier, job_id: uuid.UUID, viewer: User) -> Job:
    """Cancel at once if the job waits; ask a running job to stop. Finished jobs: 409."""
    now = utcnow()
    with transaction(db) as session:
        job = _visible(session.get(Job, job_id, with_for_update=True), viewer)
        if job.status == JobStatus.CANCELLED:
            return job
        if job.status in FINISHED:
            raise ConflictError(f"the job already {job.status}; it cannot be cancelled")
        job.cancel_requested = True
        job.updated_at = now
        if job.status in PENDING:
            job.status = JobStatus.CANCELLED.value
            job.finished_at = now
            session.execute(
                insert(events_t),
                [_event(job.id, JobStatus.CANCELLED, job.attempts, now, message="cancelled")],
            )
        else:
            session.execute(
                insert(events_t),
                [_event(job.id, job.status, job.attempts, now, message="cancel requested")],
            )
    notifier.publish(job.id, job.status)
    return job


def events_after(
    db: sessionmaker[Session], job_id: uuid.UUID, after: int, limit: int = 500
) -> list[JobEvent]:
    """The job's events with an id above `after`, oldest first."""
    with db() as session:
        return list(
            session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.id > after)
                .order_by(JobEvent.id)
                .limit(limit)
            )
        )


def counts(db: sessionmaker[Session]) -> tuple[list[tuple[str, str, int]], int]:
    """Jobs by (type, status), and how many waiting jobs are still unpublished."""
    with db() as session:
        by_type = [
            (row.type, row.status, row.n)
            for row in session.execute(
                select(Job.type, Job.status, func.count().label("n")).group_by(Job.type, Job.status)
            )
        ]
        unpublished = session.scalar(
            select(func.count()).where(Job.status.in_(PENDING), Job.published_at.is_(None))
        )
    return by_type, int(unpublished or 0)
