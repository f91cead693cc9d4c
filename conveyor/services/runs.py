"""Worker-side transitions of a job: claim, progress, lease renewal, and recording outcomes.

Each is one guarded UPDATE plus its event row in one transaction. A transition that finds
the job no longer in the expected state (a duplicate message, a lease lost to another
worker, a cancel) changes nothing and says so.

Claim and finish run for every job, so on PostgreSQL each is a single statement (the UPDATE
and the event INSERT in one CTE) committed on its own: one round trip, one commit.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, insert, or_, select, tuple_, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.announcements import Announcer
from conveyor.db import direct, storable_json, transaction
from conveyor.errors import TransientError
from conveyor.logs import job_fields
from conveyor.models import JobEventKind, JobStatus
from conveyor.models.base import utcnow
from conveyor.models.job import DUE_SQL, OUTBOX, error_type_of, events_t, jobs_t
from conveyor.models.queue import is_paused, queue_pauses_t
from conveyor.services.jobs import Enqueuer, JobMessage, new_event, rowcount
from conveyor.services.outbox import publish_now
from conveyor.services.outcomes import Outcome

logger = logging.getLogger(__name__)

#: A retry message may arrive this much before the job's next-attempt time.
EARLY_TOLERANCE = dt.timedelta(seconds=1)
#: Pauses between attempts to record an outcome (or progress, for as long as the lease
#: lasts) while the database is unreachable.
RECORD_RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
#: What `persistently` tries again: the connection failed, or the database refused for now.
UNREACHABLE = (OperationalError, InterfaceError, TransientError)

# The statuses are spelled from `JobStatus` once, here at import, not passed per call: the
# statements are prepared once per connection and run for every job.
_RUNNING = JobStatus.RUNNING.value
_CLAIMABLE = ", ".join(f"'{status.value}'" for status in OUTBOX)
_STATUS_EVENT = JobEventKind.STATUS.value

# `before` reads the row as it was (every part of the statement sees the same snapshot): when
# the job became due, for the queue-wait metric; by primary key, in the same round trip.
_CLAIM_PG = f"""
WITH before AS (
    SELECT {DUE_SQL} AS due_at FROM jobs WHERE id = %(id)s::uuid
), claimed AS (
    UPDATE jobs SET status = '{_RUNNING}', attempts = attempts + 1,
        started_at = %(now)s::timestamptz, updated_at = %(now)s, lease_expires_at = %(lease_until)s,
        next_attempt_at = NULL, published_at = COALESCE(published_at, %(now)s::timestamptz),
        worker = %(worker)s
    WHERE id = %(id)s::uuid AND NOT cancel_requested AND status IN ({_CLAIMABLE})
        AND (next_attempt_at IS NULL OR next_attempt_at <= %(due)s)
        AND NOT EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue = jobs.queue)
    RETURNING id, attempts, max_retries, worker_losses, handbacks, payload, owner_id,
        parent_id
), event AS (
    INSERT INTO job_events (job_id, at, kind, status, attempt)
    SELECT id, %(now)s::timestamptz, '{_STATUS_EVENT}', '{_RUNNING}', attempts FROM claimed
)
SELECT claimed.*, (SELECT due_at FROM before) AS due_at FROM claimed
"""

_FINISH_PG = f"""
WITH done AS (
    UPDATE jobs SET status = %(status)s::varchar, result = %(result)s::jsonb,
        error = %(error)s::jsonb, error_type = %(error_type)s::varchar,
        finished_at = %(now)s::timestamptz,
        updated_at = %(now)s::timestamptz, lease_expires_at = NULL,
        progress = CASE WHEN %(status)s::varchar = '{JobStatus.SUCCEEDED.value}' THEN 1.0
            ELSE progress END
    WHERE id = %(id)s::uuid AND status = '{_RUNNING}' AND attempts = %(attempt)s::integer
    RETURNING id
), event AS (
    INSERT INTO job_events (job_id, at, kind, status, attempt, message, traceback)
    SELECT id, %(now)s::timestamptz, '{_STATUS_EVENT}', %(status)s::varchar,
        %(attempt)s::integer, %(message)s::varchar, %(traceback)s::text
    FROM done
)
SELECT count(*) AS n FROM done
"""


class Stop(enum.Enum):
    """Why a running attempt must stop (what `report_progress` and `renew_leases` found)."""

    #: A cancel was requested while this attempt holds the job: it ends the job `cancelled`.
    CANCEL = "cancel"
    #: This attempt no longer holds the job (its lease was taken back, or the job ended or
    #: runs again): it records nothing, whatever holds the job decides. Never a cancel.
    LOST = "lost"


@dataclass(frozen=True)
class Claim:
    """What a worker needs of the job it just claimed."""

    id: uuid.UUID
    attempts: int
    max_retries: int
    worker_losses: int
    handbacks: int
    payload: dict[str, Any]
    owner_id: uuid.UUID
    parent_id: uuid.UUID | None
    #: When the job became due (submitted, its run_at, or its retry time).
    due_at: dt.datetime | None = None


def _storable(value: Any) -> str | None:
    """A value as a JSON parameter of the raw statements (None stays SQL NULL)."""
    return None if value is None else storable_json(value)


def claim(
    db: sessionmaker[Session], job_id: uuid.UUID, *, worker: str, lease: dt.timedelta
) -> Claim | None:
    """Move the job to `running` for one more attempt, or None if it is not ours to run.

    Claimable: queued, or retrying and due; never cancelled, and not while its queue is
    paused (`park` then keeps the job for after the resume). (Whether a failed job may run
    again was decided when it became `retrying`: see `services.outcomes`.)
    """
    now = utcnow()
    connections = direct(db)
    if connections is not None:
        params = {
            "id": job_id,
            "now": now,
            "lease_until": now + lease,
            "worker": worker,
            "due": now + EARLY_TOLERANCE,
        }
        found = connections.fetchone(_CLAIM_PG, params, resend=True)
        return None if found is None else Claim(**found)
    stmt = (
        update(jobs_t)
        .where(
            jobs_t.c.id == job_id,
            jobs_t.c.cancel_requested.is_(False),
            jobs_t.c.status.in_(OUTBOX),
            or_(
                jobs_t.c.next_attempt_at.is_(None),
                jobs_t.c.next_attempt_at <= now + EARLY_TOLERANCE,
            ),
            ~is_paused(jobs_t.c.queue),
        )
        .values(
            status=JobStatus.RUNNING.value,
            attempts=jobs_t.c.attempts + 1,
            started_at=now,
            updated_at=now,
            lease_expires_at=now + lease,
            next_attempt_at=None,
            published_at=func.coalesce(jobs_t.c.published_at, now),
            worker=worker,
        )
        .returning(*jobs_t.c)
    )
    due = func.coalesce(jobs_t.c.next_attempt_at, jobs_t.c.run_at, jobs_t.c.created_at)
    with transaction(db) as session:
        due_at = session.scalar(select(due).where(jobs_t.c.id == job_id))
        row = session.execute(stmt).mappings().first()
        if row is None:
            return None
        session.execute(
            insert(events_t), [new_event(job_id, JobStatus.RUNNING, row["attempts"], now)]
        )
    fields = {name: row[name] for name in Claim.__dataclass_fields__ if name != "due_at"}
    return Claim(**fields, due_at=due_at)


class Park(enum.Enum):
    """What `park` found of a job its worker could not claim."""

    #: It waits in a paused queue, now unpublished: the resume publishes it again.
    PARKED = "parked"
    #: It waits, due, in a queue not paused: the queue was resumed since the claim (and the
    #: resume took its message for one still out), or the job came back to the queue
    #: meanwhile. The worker claims it again. It is unpublished too, so should that claim
    #: fail, the resume or the outbox sweep (within its grace) publishes it.
    RESUMED = "resumed"
    #: It ended, runs, was cancelled, or is not yet due: a late or duplicate message.
    NOT_WAITING = "not_waiting"


def park(db: sessionmaker[Session], job_id: uuid.UUID) -> Park:
    """After a claim found nothing: if the job still waits, in a paused queue or, due, in one
    resumed since, mark its message unpublished (the caller acknowledges the message) and say
    which. Its due time is kept, so a delayed job or a retry still runs no earlier than
    planned. Nothing changes for a job that ended, runs, was cancelled, or is not yet due in a
    queue not paused (a late or duplicate message).

    The resume publishes only the jobs without a message: a resume that lands between the
    claim and this park leaves out a job whose message is being acknowledged here. Such a job
    is `Park.RESUMED`, for its worker to claim again; were it left as it was, it would wait for
    the sweep's `requeue_after`. Runs only on that rare path: every claim that succeeds pays
    nothing for it.
    """
    now = utcnow()
    stmt = (
        update(jobs_t)
        .where(
            jobs_t.c.id == job_id,
            jobs_t.c.status.in_(OUTBOX),
            jobs_t.c.cancel_requested.is_(False),
            or_(
                is_paused(jobs_t.c.queue),
                jobs_t.c.next_attempt_at.is_(None),
                jobs_t.c.next_attempt_at <= now + EARLY_TOLERANCE,
            ),
        )
        .values(published_at=None)
        .returning(jobs_t.c.queue)
    )
    with transaction(db) as session:
        queue = session.scalar(stmt)
        if queue is None:
            return Park.NOT_WAITING
        # Read again rather than returned by the UPDATE (SQLite cannot correlate a subquery
        # of RETURNING): a pause or resume between the two only changes who publishes it.
        pause = select(queue_pauses_t.c.queue).where(queue_pauses_t.c.queue == queue)
        still = session.scalar(pause)
    return Park.RESUMED if still is None else Park.PARKED


def _guarded(job_id: uuid.UUID, attempt: int) -> Any:
    return update(jobs_t).where(
        jobs_t.c.id == job_id,
        jobs_t.c.status == JobStatus.RUNNING,
        jobs_t.c.attempts == attempt,
    )


def finish(
    db: sessionmaker[Session],
    job_id: uuid.UUID,
    attempt: int,
    status: JobStatus,
    *,
    result: Any = None,
    result_json: str | None = None,
    error: dict[str, Any] | None = None,
    interrupted: bool = False,
) -> bool:
    """Record the end of attempt `attempt`; False if that attempt no longer owns the job.
    `result_json` is `result` already encoded, if the caller has it. `interrupted`: the
    attempt was cut short by infrastructure, which counts in `worker_losses` (rare: it takes
    the general path, the direct statement stays as every job needs it)."""
    connections = None if interrupted else direct(db)
    if connections is not None:
        params = {
            "id": job_id,
            "attempt": attempt,
            "status": status.value,
            "result": result_json if result_json is not None else _storable(result),
            "error": _storable(error),
            "error_type": error_type_of(error),
            "message": error["message"][:1000] if error else None,
            "traceback": error.get("traceback") if error else None,
            "now": utcnow(),
        }
        done = connections.fetchone(_FINISH_PG, params, resend=True)
        return done is not None and done["n"] == 1
    with transaction(db) as session:
        return _finish_in(
            session, job_id, attempt, status, result=result, error=error, interrupted=interrupted
        )


def _finish_in(
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    status: JobStatus,
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
    interrupted: bool = False,
    cancel_requested: bool = False,
) -> bool:
    """`finish` in `session`. `cancel_requested`: only if a cancel was requested (the one way
    a job that nobody cancelled cannot end `cancelled` by mistake)."""
    now = utcnow()
    values: dict[str, Any] = {
        "status": status.value,
        "result": result,
        "error": error,
        "error_type": error_type_of(error),
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
    }
    if status == JobStatus.SUCCEEDED:
        values["progress"] = 1.0
    if interrupted:
        values["worker_losses"] = jobs_t.c.worker_losses + 1
    message = error["message"] if error else None
    traceback = error.get("traceback") if error else None
    stmt = _guarded(job_id, attempt)
    if cancel_requested:
        stmt = stmt.where(jobs_t.c.cancel_requested.is_(True))
    if rowcount(session.execute(stmt.values(**values))) != 1:
        return False
    session.execute(
        insert(events_t),
        [new_event(job_id, status, attempt, now, message=message, traceback=traceback)],
    )
    return True


def retry_later(
    db: sessionmaker[Session],
    job_id: uuid.UUID,
    attempt: int,
    *,
    error: dict[str, Any],
    next_attempt_at: dt.datetime,
    interrupted: bool = False,
    deferred: bool = False,
) -> JobStatus | None:
    """Record a failed attempt that will run again at `next_attempt_at` (message unpublished).
    `interrupted`: infrastructure cut it short, which counts in `worker_losses`; `deferred`:
    the job chose to wait (`RetryLater(deferred=True)`), which counts in `handbacks`.

    Returns `retrying`; `cancelled` when a cancel was requested meanwhile (the job will not
    run again); None when this attempt no longer holds the job (nothing is recorded then).
    """
    now = utcnow()
    values: dict[str, Any] = {
        "status": JobStatus.RETRYING.value,
        "error": error,
        "error_type": error_type_of(error),
        "next_attempt_at": next_attempt_at,
        "published_at": None,
        "updated_at": now,
        "lease_expires_at": None,
    }
    if interrupted:
        values["worker_losses"] = jobs_t.c.worker_losses + 1
    if deferred:
        values["handbacks"] = jobs_t.c.handbacks + 1
    with transaction(db) as session:
        stmt = _guarded(job_id, attempt).where(jobs_t.c.cancel_requested.is_(False))
        if rowcount(session.execute(stmt.values(**values))) != 1:
            cancelled = _finish_in(
                session,
                job_id,
                attempt,
                JobStatus.CANCELLED,
                error=error,
                interrupted=interrupted,
                cancel_requested=True,
            )
            return JobStatus.CANCELLED if cancelled else None
        session.execute(
            insert(events_t),
            [
                new_event(
                    job_id,
                    JobStatus.RETRYING,
                    attempt,
                    now,
                    message=error["message"],
                    traceback=error.get("traceback"),
                )
            ],
        )
    return JobStatus.RETRYING


#: The event of a run handed back by a stopping worker.
HANDED_BACK = (
    "handed back: its worker stopped before it finished (runs again; not counted as a "
    "failure or a lost worker)"
)


def hand_back(db: sessionmaker[Session], job_id: uuid.UUID, attempt: int) -> JobStatus | None:
    """Return attempt `attempt`, still running on a worker that is stopping, to the queue.

    The job goes back to `queued` (unpublished: the caller publishes it, or the outbox sweep
    does) with `handbacks` counted, neither a failure nor a worker loss, and an event saying
    why. A job whose cancel was requested ends `cancelled` instead. Returns the status
    recorded, or None when this attempt no longer holds the job (it ended meanwhile).
    """
    now = utcnow()
    values: dict[str, Any] = {
        "status": JobStatus.QUEUED.value,
        "handbacks": jobs_t.c.handbacks + 1,
        "next_attempt_at": None,
        "published_at": None,
        "lease_expires_at": None,
        "updated_at": now,
    }
    with transaction(db) as session:
        stmt = _guarded(job_id, attempt).where(jobs_t.c.cancel_requested.is_(False))
        if rowcount(session.execute(stmt.values(**values))) != 1:
            cancelled = _finish_in(
                session,
                job_id,
                attempt,
                JobStatus.CANCELLED,
                error={"type": "Cancelled", "message": "cancelled while its worker stopped"},
                cancel_requested=True,
            )
            return JobStatus.CANCELLED if cancelled else None
        session.execute(
            insert(events_t),
            [new_event(job_id, JobStatus.QUEUED, attempt, now, message=HANDED_BACK)],
        )
    return JobStatus.QUEUED


def record(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    announcer: Announcer,
    message: JobMessage,
    attempt: int,
    outcome: Outcome,
) -> JobStatus | None:
    """Apply the policy's `outcome` to attempt `attempt` of the job `message` names.

    A retry is written unpublished and its delayed message sent at once (the outbox sweep
    sends it if that fails). Returns the status recorded (a retry may end `cancelled` when a
    cancel arrived meanwhile), or None when this attempt no longer holds the job. A database
    that cannot be reached is tried again for a few seconds: the guarded UPDATE makes a repeat
    harmless, and giving up would leave the job to the reconciler, which runs it again.
    """
    job_id = message.job_id
    if outcome.status == JobStatus.RETRYING:
        assert outcome.error is not None, "the policy gives every retry its error"
        delay = outcome.retry_in or dt.timedelta(0)
        status = persistently(
            functools.partial(
                retry_later,
                db,
                job_id,
                attempt,
                error=outcome.error,
                next_attempt_at=utcnow() + delay,
                interrupted=outcome.interrupted,
                deferred=outcome.deferred,
            ),
            what="record an outcome",
        )
        if status is not None:
            announcer.announce(job_id, status)
        if status == JobStatus.RETRYING:
            delay_ms = int(delay.total_seconds() * 1000)
            retry = JobMessage(job_id, message.type, message.queue, delay_ms)
            publish_now(db, enqueuer, [retry], "retried")
        return status
    recorded = persistently(
        functools.partial(
            finish,
            db,
            job_id,
            attempt,
            outcome.status,
            result=outcome.result,
            result_json=outcome.result_json,
            error=outcome.error,
            interrupted=outcome.interrupted,
        ),
        what="record an outcome",
    )
    if not recorded:
        logger.warning(
            "job %s attempt %d no longer holds the job; %s not recorded",
            job_id,
            attempt,
            outcome.status,
            extra=job_fields(job_id),
        )
        return None
    announcer.announce(job_id, outcome.status)
    return outcome.status


T = TypeVar("T")


def persistently(
    write: Callable[[], T],
    *,
    what: str,
    delays: Sequence[float] = RECORD_RETRY_DELAYS,
    wait: Callable[[float], object] = time.sleep,
) -> T:
    """`write()`, tried again after each of `delays` while the database connection fails (a
    pooled connection found dead after a database restart, a short outage); the last failure
    is raised. The engine drops its whole pool at the first connection found cut, so the next
    try connects anew. `wait` pauses (a job's own wait, which a cancel interrupts)."""
    for delay in delays:
        try:
            return write()
        except UNREACHABLE as exc:
            logger.warning("could not %s (%r); again in %.1fs", what, exc, delay)
            wait(delay)
    return write()


def delays_within(seconds: float) -> tuple[float, ...]:
    """The first `RECORD_RETRY_DELAYS` that add up to at most `seconds`."""
    total, kept = 0.0, []
    for delay in RECORD_RETRY_DELAYS:
        total += delay
        if total > seconds:
            break
        kept.append(delay)
    return tuple(kept)


def store_progress(
    db: sessionmaker[Session],
    job_id: uuid.UUID,
    attempt: int,
    fraction: float,
    message: str | None,
    *,
    within: float,
    wait: Callable[[float], object] = time.sleep,
) -> Stop | None:
    """`report_progress`, riding out a database blip: tried again for up to `within` seconds
    (the lease), then dropped with a warning (progress is advisory, and the heartbeat keeps
    renewing the lease on its own). Returns why the job must stop, or None."""
    try:
        return persistently(
            functools.partial(report_progress, db, job_id, attempt, fraction, message),
            what="store progress",
            delays=delays_within(within),
            wait=wait,
        )
    except UNREACHABLE as exc:
        logger.warning(
            "progress %.3f of job %s dropped: %r", fraction, job_id, exc, extra=job_fields(job_id)
        )
        return None


def report_progress(
    db: sessionmaker[Session],
    job_id: uuid.UUID,
    attempt: int,
    fraction: float,
    message: str | None,
) -> Stop | None:
    """Store progress; returns why the attempt must stop (a cancel was requested meanwhile,
    or the attempt no longer holds the job), or None."""
    now = utcnow()
    stmt = (
        _guarded(job_id, attempt)
        .values(progress=fraction, updated_at=now)
        .returning(jobs_t.c.cancel_requested)
    )
    with transaction(db) as session:
        cancel_requested = session.execute(stmt).scalar()
        if cancel_requested is None:  # no longer ours: stop, and record nothing
            return Stop.LOST
        session.execute(
            insert(events_t),
            [
                new_event(
                    job_id,
                    JobStatus.RUNNING,
                    attempt,
                    now,
                    kind=JobEventKind.PROGRESS,
                    progress=fraction,
                    message=message,
                )
            ],
        )
    return Stop.CANCEL if cancel_requested else None


def renew_leases(
    db: sessionmaker[Session], running: dict[uuid.UUID, int], lease: dt.timedelta
) -> dict[uuid.UUID, Stop]:
    """Extend the leases this worker holds; returns the jobs that must stop, and why: no
    longer held by this attempt (`Stop.LOST`, even if a cancel was requested: whatever holds
    the job decides), or held and asked to cancel (`Stop.CANCEL`)."""
    if not running:
        return {}
    now = utcnow()
    with transaction(db) as session:
        session.execute(
            update(jobs_t)
            .where(
                tuple_(jobs_t.c.id, jobs_t.c.attempts).in_(list(running.items())),
                jobs_t.c.status == JobStatus.RUNNING,
            )
            .values(lease_expires_at=now + lease)
        )
        rows = session.execute(
            select(
                jobs_t.c.id, jobs_t.c.status, jobs_t.c.attempts, jobs_t.c.cancel_requested
            ).where(jobs_t.c.id.in_(running))
        ).all()
    stops: dict[uuid.UUID, Stop] = {}
    for row in rows:
        if row.status != JobStatus.RUNNING or row.attempts != running[row.id]:
            stops[row.id] = Stop.LOST
        elif row.cancel_requested:
            stops[row.id] = Stop.CANCEL
    return stops
