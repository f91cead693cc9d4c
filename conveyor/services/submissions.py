"""The one way a job comes to exist: build and validate, write (group-committed), publish.

HTTP submissions, `ctx.submit` (child jobs), the scheduler and admin replays all go through
`Submissions`; none of them writes a job row or publishes its first message on its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import direct, storable_json, transaction
from conveyor.errors import BadRequestError, ConflictError, InvalidRequestError, field_errors
from conveyor.ids import uuid7
from conveyor.logs import job_fields
from conveyor.models import Job, JobEventKind, JobStatus
from conveyor.models.base import utcnow
from conveyor.models.job import events_t, jobs_t
from conveyor.registry import JobType, Payload, Registry
from conveyor.services.jobs import Enqueuer, JobMessage, new_event
from conveyor.services.outbox import publish_now

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255
#: An idempotency key, as `check_idempotency_key` accepts it (for the OpenAPI document).
KEY_PATTERN = rf"^[\x20-\x7e]{{1,{MAX_KEY_LENGTH}}}$"


@dataclass(frozen=True)
class NewJob:
    """A validated submission, ready to be written."""

    job_type: str
    queue: str
    payload: dict[str, Any]
    max_retries: int
    owner_id: uuid.UUID
    idempotency_key: str | None = None
    #: When the submitter asked the job to run (UTC), if it did.
    run_at: dt.datetime | None = None
    parent_id: uuid.UUID | None = None
    #: `scheduled` until `run_at`, or `queued`.
    status: JobStatus = JobStatus.QUEUED
    #: `payload` as the JSON text validation produced (so a write does not encode it again);
    #: derived, so not part of what makes two submissions equal.
    payload_json: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Submitted:
    """A written job, and whether this submission created it (False: an idempotent replay)."""

    job: Job
    created: bool


class Writer(Protocol):
    """Writes keyless submissions in shared transactions (`conveyor.background.batcher`)."""

    def write(self, new: NewJob) -> Future[Submitted]:
        """The created job once committed, or the error that prevented it."""


def request_hash(job_type: str, payload: dict[str, Any]) -> str:
    """Fingerprint of a submission, to tell a replay from a different request."""
    canonical = json.dumps([job_type, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Submissions:
    """Builds, validates, writes and publishes submissions.

    Keyless submissions go through the `writer` when there is one (the web process's group
    commit); keyed ones, and all of them in processes without a writer, are written by the
    `executor` or, without one, in the calling thread. After the commit a queued job's
    message is handed to the enqueuer (the outbox sweep covers a failed publish); a scheduled
    job is left to the sweeper, which `on_scheduled` may wake early. `submit` waits in the
    calling thread; `asubmit` awaits on an event loop.
    """

    def __init__(
        self,
        db: sessionmaker[Session],
        registry: Registry,
        enqueuer: Enqueuer,
        *,
        max_delay: dt.timedelta,
        writer: Writer | None = None,
        executor: Executor | None = None,
        on_scheduled: Callable[[dt.datetime], None] | None = None,
    ) -> None:
        self.db = db
        self.registry = registry
        self.enqueuer = enqueuer
        self.max_delay = max_delay
        self.writer = writer
        self.executor = executor
        self.on_scheduled = on_scheduled

    def build(
        self,
        job_type: str | Callable[..., Any] | JobType,
        payload: Payload | Mapping[str, Any] | None,
        **fields: Any,
    ) -> NewJob:
        """`build` with this process's registry and delay limit (`owner_id` and the other
        fields as keywords)."""
        return build(self.registry, self.max_delay, job_type, payload, **fields)

    def submit(self, new: NewJob) -> Submitted:
        """Write the job, wait for the commit, then publish it and wait for the broker's
        confirmation (from a thread that may block: a worker's `ctx.submit`, the scheduler)."""
        return self._published(self._write(new).result(), wait=True)

    def submit_now(
        self,
        job_type: str | Callable[..., Any] | JobType,
        payload: Payload | Mapping[str, Any] | None,
        *,
        owner_id: uuid.UUID,
        **options: Any,
    ) -> Submitted:
        """`build` and `submit` in one call (the scheduler, admin replays, scripts)."""
        return self.submit(self.build(job_type, payload, owner_id=owner_id, **options))

    async def asubmit(self, new: NewJob) -> Submitted:
        """`submit` from an event loop (the web process). The write runs on the batcher or the
        database threads; the publish runs here, on the loop, once the row is committed, which
        spreads the publishes out as the requests resume (cheaper than a burst per batch). A
        caller that goes away leaves a committed job's publish to the outbox sweep."""
        return self._published(await asyncio.wrap_future(self._write(new)))

    def publish_written(self, jobs: Sequence[Job]) -> None:
        """Publish jobs that a caller wrote in its own transaction (`insert_jobs`), after its
        commit: handed to the background publishers; the outbox sweep covers a failure."""
        for job in jobs:
            self._published(Submitted(job, created=True))

    def _write(self, new: NewJob) -> Future[Submitted]:
        """The write, as a future: group-committed (keyless, with a writer), on the executor,
        or done at once in this thread."""
        if new.idempotency_key is None and self.writer is not None:
            return self.writer.write(new)
        if self.executor is not None:
            return self.executor.submit(self._write_now, new)
        submitted: Future[Submitted] = Future()
        try:
            submitted.set_result(self._write_now(new))
        except Exception as exc:
            submitted.set_exception(exc)
        return submitted

    def _write_now(self, new: NewJob) -> Submitted:
        job, created = write(self.db, new)
        return Submitted(job, created)

    def _published(self, submitted: Submitted, *, wait: bool = False) -> Submitted:
        """After the commit: publish a new queued job's message (`wait`: confirmed and marked
        here; else handed to the background publishers, whose confirmations the sweeper
        marks), or tell the sweeper when a new scheduled one is due. Never fails the
        submission: the row is committed, and the outbox sweep publishes what this could not."""
        if not submitted.created:
            return submitted
        job = submitted.job
        try:
            message = JobMessage(job.id, job.type, job.queue)
            if job.status == JobStatus.QUEUED and wait:
                publish_now(self.db, self.enqueuer, [message], "submitted")
            elif job.status == JobStatus.QUEUED:
                self.enqueuer.publish_soon(message)
            elif job.status == JobStatus.SCHEDULED and self.on_scheduled and job.next_attempt_at:
                self.on_scheduled(job.next_attempt_at)
        except Exception:
            logger.warning(
                "job %s committed; its publish is left to the sweep",
                job.id,
                exc_info=True,
                extra=job_fields(job.id),
            )
        return submitted


def build(
    registry: Registry,
    max_delay: dt.timedelta,
    job_type: str | Callable[..., Any] | JobType,
    payload: Payload | Mapping[str, Any] | None,
    *,
    owner_id: uuid.UUID,
    idempotency_key: str | None = None,
    run_at: dt.datetime | None = None,
    delay: dt.timedelta | float | None = None,
    parent_id: uuid.UUID | None = None,
) -> NewJob:
    """A validated `NewJob` of a type in `registry`, due no more than `max_delay` ahead (422
    naming the field, 400 for a bad key); no I/O."""
    spec = job_type if isinstance(job_type, JobType) else registry.get(job_type)
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    now = utcnow()
    when = _when(run_at, delay, max_delay, now)
    dumped, text = validated_payload(spec, payload)
    return NewJob(
        job_type=spec.name,
        queue=spec.queue,
        payload=dumped,
        max_retries=spec.retry.max_retries,
        owner_id=owner_id,
        idempotency_key=idempotency_key,
        run_at=when,
        parent_id=parent_id,
        status=JobStatus.SCHEDULED if when and when > now else JobStatus.QUEUED,
        payload_json=text,
    )


def _when(
    run_at: dt.datetime | None,
    delay: dt.timedelta | float | None,
    max_delay: dt.timedelta,
    now: dt.datetime,
) -> dt.datetime | None:
    """The due time a submission asks for (UTC), or None for now."""
    if run_at is not None and delay is not None:
        raise InvalidRequestError(
            "give run_at or delay_seconds, not both",
            errors=[{"field": "delay_seconds", "message": "not together with run_at"}],
        )
    limit = max_delay.total_seconds()
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)
        if not (math.isfinite(seconds) and 0 <= seconds <= limit):
            raise InvalidRequestError(
                f"delay_seconds must be from 0 to {limit:.0f}",
                errors=[{"field": "delay_seconds", "message": f"0 to {limit:.0f} seconds"}],
            )
        return now + dt.timedelta(seconds=seconds)
    if run_at is None:
        return None
    if run_at.tzinfo is None:
        raise InvalidRequestError(
            "run_at needs a UTC offset (RFC 3339, such as 2030-01-01T09:00:00Z)",
            errors=[{"field": "run_at", "message": "a time with a UTC offset"}],
        )
    if run_at - now > max_delay:
        raise InvalidRequestError(
            f"run_at is more than {limit:.0f} seconds ahead",
            errors=[{"field": "run_at", "message": f"at most {limit:.0f} seconds ahead"}],
        )
    try:
        return run_at.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+05:00 has no UTC time
        raise InvalidRequestError(
            "run_at is out of range", errors=[{"field": "run_at", "message": "out of range"}]
        ) from None


def check_idempotency_key(key: str) -> None:
    """400 unless the key has 1 to 255 printable ASCII characters."""
    if not (1 <= len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
        raise BadRequestError(
            "Idempotency-Key must have 1 to 255 printable ASCII characters",
            errors=[{"field": "Idempotency-Key", "message": "1 to 255 printable ASCII"}],
        )


def validated_payload(
    spec: JobType, payload: Payload | Mapping[str, Any] | None
) -> tuple[dict[str, Any], str]:
    """The payload as the job type's model validates and dumps it, and as JSON text; 422
    naming bad fields."""
    if isinstance(payload, Payload) and not isinstance(payload, spec.payload):
        raise InvalidRequestError(
            f"the payload of {spec.name} is a {spec.payload.__name__}, "
            f"not a {type(payload).__name__}",
            errors=[{"field": "payload", "message": f"expected {spec.payload.__name__}"}],
        )
    try:
        model = (
            payload if isinstance(payload, Payload) else spec.payload.model_validate(payload or {})
        )
        dumped = model.model_dump(mode="json")
        text = storable_json(dumped)
    except ValidationError as exc:
        raise InvalidRequestError(
            f"invalid payload for {spec.name}", errors=field_errors(exc, "payload")
        ) from None
    except ValueError as exc:  # NaN, infinities, NUL characters
        raise InvalidRequestError(
            f"the payload of {spec.name} cannot be stored: {exc}",
            errors=[{"field": "payload", "message": f"cannot be stored: {exc}"}],
        ) from None
    return dumped, text


# --- writing --------------------------------------------------------------------------------


def write(db: sessionmaker[Session], new: NewJob) -> tuple[Job, bool]:
    """Write one job (and its first event) in one transaction.

    Returns the job and whether it was created; with an idempotency key already used for the
    same request, the earlier job comes back instead (a different request is a 422).
    """
    key = new.idempotency_key
    if key is None:
        return write_many(db, [new])[0], True
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


def write_many(db: sessionmaker[Session], batch: Sequence[NewJob]) -> list[Job]:
    """Write several jobs without idempotency keys in one transaction (one commit).

    On PostgreSQL that is a single statement over arrays (jobs and their first events), so a
    batch costs one round trip whatever its size.
    """
    if any(new.idempotency_key is not None for new in batch):
        raise ValueError("jobs with an idempotency key are written by write()")
    connections = direct(db)
    if connections is None:
        with transaction(db) as session:
            return _insert(session, batch)
    rows = _rows(batch)
    connections.execute(
        _INSERT_PG,
        {
            "ids": [r["id"] for r in rows],
            "types": [r["type"] for r in rows],
            "queues": [r["queue"] for r in rows],
            "statuses": [r["status"] for r in rows],
            "payloads": [new.payload_json or json.dumps(new.payload) for new in batch],
            "max_retries": [r["max_retries"] for r in rows],
            "owners": [r["owner_id"] for r in rows],
            "parents": [r["parent_id"] for r in rows],
            "run_ats": [r["run_at"] for r in rows],
            "due": [r["next_attempt_at"] for r in rows],
            "now": rows[0]["created_at"],
        },
    )
    return [Job(**row) for row in rows]


_INSERT_PG = f"""
WITH inserted AS (
    INSERT INTO jobs (id, type, queue, status, payload, attempts, worker_losses, max_retries,
        owner_id, parent_id, cancel_requested, created_at, updated_at, run_at, next_attempt_at)
    SELECT id, type, queue, status, payload::jsonb, 0, 0, max_retries, owner_id, parent_id,
        false, %(now)s::timestamptz, %(now)s::timestamptz, run_at, due
    FROM unnest(%(ids)s::uuid[], %(types)s::varchar[], %(queues)s::varchar[],
        %(statuses)s::varchar[], %(payloads)s::text[], %(max_retries)s::integer[],
        %(owners)s::uuid[], %(parents)s::uuid[], %(run_ats)s::timestamptz[],
        %(due)s::timestamptz[])
        AS t(id, type, queue, status, payload, max_retries, owner_id, parent_id, run_at, due)
    RETURNING id, status
)
INSERT INTO job_events (job_id, at, kind, status, attempt)
SELECT id, %(now)s::timestamptz, '{JobEventKind.STATUS.value}', status, 0 FROM inserted
"""


def insert_jobs(session: Session, batch: Sequence[NewJob]) -> list[Job]:
    """Write keyless jobs in the caller's transaction, so they commit (or not) with the rows
    that need them (a notification's deliveries); publish them with `publish_written` after
    the commit. The row is still the outbox: a job whose publish is lost is swept."""
    if any(new.idempotency_key is not None for new in batch):
        raise ValueError("jobs with an idempotency key are written by write()")
    return _insert(session, batch) if batch else []


def _insert(session: Session, batch: Sequence[NewJob]) -> list[Job]:
    rows = _rows(batch)
    session.execute(insert(jobs_t), rows)
    now = rows[0]["created_at"]
    session.execute(insert(events_t), [new_event(r["id"], r["status"], 0, now) for r in rows])
    return [Job(**row) for row in rows]


def _rows(batch: Sequence[NewJob]) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "id": uuid7(),
            "type": new.job_type,
            "queue": new.queue,
            "status": new.status.value,
            "payload": new.payload,
            "result": None,
            "error": None,
            "attempts": 0,
            "worker_losses": 0,
            "handbacks": 0,
            "max_retries": new.max_retries,
            "progress": None,
            "owner_id": new.owner_id,
            "parent_id": new.parent_id,
            "idempotency_key": new.idempotency_key,
            "request_hash": request_hash(new.job_type, new.payload)
            if new.idempotency_key
            else None,
            "cancel_requested": False,
            "worker": None,
            "created_at": now,
            "updated_at": now,
            "run_at": new.run_at,
            "published_at": None,
            "started_at": None,
            "finished_at": None,
            "next_attempt_at": new.run_at if new.status == JobStatus.SCHEDULED else None,
            "lease_expires_at": None,
        }
        for new in batch
    ]


# --- idempotency-key locks ------------------------------------------------------------------

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
