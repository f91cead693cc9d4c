"""What operators do to jobs: retry one, and cancel or retry many by filter, or purge a queue.

A retry gives a `failed` or `cancelled` job a new attempt cycle: the same job (same id,
payload and history) goes back to `queued`, its attempts go on counting, and its budgets are
renewed (its job type's retries again, and `CONVEYOR_MAX_WORKER_LOSSES` lost workers again).
It is published through the outbox like a submission. Its last error stays on the job, for
reading, until the new cycle's next outcome replaces it.

The bulk operations are for admins; each event they write names who did it, and each call
logs one line with the count.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, insert, or_, select, update
from sqlalchemy.orm import Session, defer, sessionmaker

from conveyor.announcements import Announcer
from conveyor.db import transaction
from conveyor.errors import ConflictError, InvalidRequestError, PermissionDeniedError
from conveyor.models import Job, JobEvent, JobStatus, Role, User
from conveyor.models.base import utcnow
from conveyor.models.job import WAITING, events_t, jobs_t
from conveyor.registry import Registry
from conveyor.services import audit, notifications
from conveyor.services.jobs import Enqueuer, JobMessage, _visible, new_event
from conveyor.services.outbox import publish_now

logger = logging.getLogger(__name__)

#: Jobs changed per transaction by a bulk operation.
BATCH = 500
#: The most jobs one bulk request changes (`limit`'s default and upper bound).
DEFAULT_BULK_LIMIT = 1000
MAX_BULK_LIMIT = 10_000
#: What a bulk cancel and a bulk retry act on, and a retry accepts.
CANCELLABLE = (*WAITING, JobStatus.RUNNING)
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)


def who(user: User) -> str:
    """How events and logs name the user who acted."""
    return user.email


def require_operator(user: User) -> None:
    """Operators and admins may act on every user's jobs and the queues; members may not."""
    if not Role(user.role).sees_all_jobs:
        raise PermissionDeniedError(
            "only operators and admins may act on other users' jobs and the queues"
        )


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a bulk operation acts on; every given criterion must hold."""

    statuses: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    owner_id: uuid.UUID | None = None
    created_before: dt.datetime | None = None
    created_after: dt.datetime | None = None
    ids: tuple[uuid.UUID, ...] = field(default=())
    #: The `type` of the jobs' error (the exception's class); None: an error without one.
    error_types: tuple[str | None, ...] = ()
    #: Only jobs that finished at or before this time (what an operator saw when choosing).
    finished_up_to: dt.datetime | None = None

    def is_empty(self) -> bool:
        return not (
            self.statuses
            or self.types
            or self.error_types
            or self.queues
            or self.ids
            or self.owner_id is not None
            or self.created_before is not None
            or self.created_after is not None
        )

    def describe(self) -> str:
        parts = [
            f"{name}={','.join(map(str, value)) if isinstance(value, tuple) else value}"
            for name, value in vars(self).items()
            if value not in ((), None)
        ]
        return " ".join(parts) or "all"

    def conditions(self, allowed: Sequence[JobStatus]) -> list[ColumnElement[bool]]:
        """The WHERE clause; statuses outside `allowed` are a 422 naming `status`."""
        statuses = list(self.statuses) or [s.value for s in allowed]
        wrong = [s for s in statuses if s not in {a.value for a in allowed}]
        if wrong:
            names = ", ".join(a.value for a in allowed)
            raise InvalidRequestError(
                f"status {wrong[0]!r} cannot be acted on here (only: {names})",
                errors=[{"field": "status", "message": f"must be among: {names}"}],
            )
        where: list[ColumnElement[bool]] = [jobs_t.c.status.in_(statuses)]
        if self.types:
            where.append(jobs_t.c.type.in_(self.types))
        if self.queues:
            where.append(jobs_t.c.queue.in_(self.queues))
        if self.ids:
            where.append(jobs_t.c.id.in_(self.ids))
        if self.error_types:
            named = [kind for kind in self.error_types if kind is not None]
            either = [jobs_t.c.error_type.in_(named)] if named else []
            if None in self.error_types:
                either.append(jobs_t.c.error_type.is_(None))
            where.append(or_(*either))
        if self.owner_id is not None:
            where.append(jobs_t.c.owner_id == self.owner_id)
        if self.finished_up_to is not None:
            where.append(jobs_t.c.finished_at <= self.finished_up_to)
        if self.created_before is not None:
            where.append(jobs_t.c.created_at < self.created_before)
        if self.created_after is not None:
            where.append(jobs_t.c.created_at >= self.created_after)
        return where


@dataclass(frozen=True)
class BulkResult:
    """What a bulk operation did."""

    count: int  #: jobs changed
    more: bool  #: whether jobs that match are left (the limit was reached): call again
    stopping: int = 0  #: of `count`, running jobs asked to stop (a cancel)
    skipped: int = 0  #: jobs left alone: of a job type this server does not know (a retry)


def _batches(
    session: Session, where: list[ColumnElement[bool]], after: uuid.UUID | None, limit: int
) -> Select[Any]:
    stmt = select(
        jobs_t.c.id,
        jobs_t.c.type,
        jobs_t.c.queue,
        jobs_t.c.status,
        jobs_t.c.attempts,
        jobs_t.c.handbacks,
    ).where(*where)
    if after is not None:
        stmt = stmt.where(jobs_t.c.id > after)
    stmt = stmt.order_by(jobs_t.c.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return stmt


def check_limit(limit: int) -> int:
    """`limit` if it is from 1 to `MAX_BULK_LIMIT`, else a 422 naming `limit`."""
    if not 1 <= limit <= MAX_BULK_LIMIT:
        raise InvalidRequestError(
            f"limit must be from 1 to {MAX_BULK_LIMIT}",
            errors=[{"field": "limit", "message": f"1 to {MAX_BULK_LIMIT}"}],
        )
    return limit


def _check_filter(where: JobFilter) -> None:
    if where.is_empty():
        raise InvalidRequestError(
            "give at least one filter (status, type, queue, owner, created_before or "
            "created_after): a bulk operation never acts on every job by default",
            errors=[{"field": "body", "message": "at least one filter"}],
        )


# --- cancel -------------------------------------------------------------------------------


def bulk_cancel(
    db: sessionmaker[Session],
    announcer: Announcer,
    by: User,
    where: JobFilter,
    *,
    limit: int = DEFAULT_BULK_LIMIT,
    reason: str = "bulk cancel",
    client: audit.Client = audit.NOBODY,
    audited_as: str | None = "jobs_cancelled",
) -> BulkResult:
    """Cancel the waiting jobs that match (at once) and ask the running ones to stop, up to
    `limit` of them, `BATCH` per transaction. Written to the audit log as `audited_as` (None:
    the caller records its own action) with the filter and the counts. Operators and admins
    only."""
    require_operator(by)
    _check_filter(where)
    limit = check_limit(limit)
    conditions = [*where.conditions(CANCELLABLE), jobs_t.c.cancel_requested.is_(False)]
    done = stopping = 0
    after: uuid.UUID | None = None
    more = False
    changed: list[tuple[uuid.UUID, str]] = []
    message = f"{reason} by {who(by)}"
    while True:
        size = min(BATCH, limit - done)
        if size == 0:
            more = _exists(db, conditions, after)
            break
        now = utcnow()
        with transaction(db) as session:
            rows = session.execute(_batches(session, conditions, after, size)).all()
            if not rows:
                break
            after = rows[-1].id
            waiting = [r for r in rows if r.status != JobStatus.RUNNING]
            running = [r for r in rows if r.status == JobStatus.RUNNING]
            if waiting:
                session.execute(
                    update(jobs_t)
                    .where(
                        jobs_t.c.id.in_([r.id for r in waiting]),
                        jobs_t.c.status.in_([s.value for s in WAITING]),
                    )
                    .values(
                        status=JobStatus.CANCELLED.value,
                        cancel_requested=True,
                        finished_at=now,
                        next_attempt_at=None,
                        updated_at=now,
                    )
                )
            if running:
                session.execute(
                    update(jobs_t)
                    .where(jobs_t.c.id.in_([r.id for r in running]))
                    .values(cancel_requested=True, updated_at=now)
                )
            session.execute(
                insert(events_t),
                [
                    new_event(r.id, JobStatus.CANCELLED, r.attempts, now, message=message)
                    for r in waiting
                ]
                + [
                    new_event(
                        r.id, JobStatus.RUNNING, r.attempts, now, message=f"{message}: requested"
                    )
                    for r in running
                ],
            )
        changed += [(r.id, JobStatus.CANCELLED.value) for r in waiting]
        changed += [(r.id, JobStatus.RUNNING.value) for r in running]
        done += len(rows)
        stopping += len(running)
        if len(rows) < size:
            # Rows another transaction held (a publish marking them) were skipped, not
            # cancelled: they still match, so say there is more.
            more = _exists(db, conditions, None)
            break
    for job_id, status in changed:
        announcer.announce(job_id, status)
    logger.info(
        "%s by %s: %d job(s) cancelled, %d running asked to stop (%s)",
        reason,
        who(by),
        done - stopping,
        stopping,
        where.describe(),
    )
    if audited_as is not None:
        audit.record_apart(
            db,
            audited_as,
            client=client,
            actor_id=audit.actor_id_of(by),
            filter=where.describe(),
            cancelled=done - stopping,
            stopping=stopping,
            more=more,
        )
    return BulkResult(done, more, stopping=stopping)


def purge_queue(
    db: sessionmaker[Session],
    announcer: Announcer,
    by: User,
    queue: str,
    *,
    limit: int | None = None,
    client: audit.Client = audit.NOBODY,
) -> BulkResult:
    """Cancel the waiting jobs (scheduled, queued, retrying) of `queue`, up to `limit` of them
    (default `DEFAULT_BULK_LIMIT`) in batches, as `bulk_cancel` does; `more` says whether
    some are left (call again). Running jobs go on. Their messages stay on the broker, and
    workers skip them (the job is cancelled). Written to the audit log (`queue_purged`) once
    the batches are done, with how many jobs it settled. Operators and admins only."""
    require_operator(by)
    where = JobFilter(statuses=tuple(s.value for s in WAITING), queues=(queue,))
    limit = DEFAULT_BULK_LIMIT if limit is None else limit
    result = bulk_cancel(
        db, announcer, by, where, limit=limit, reason=f"purge of queue {queue}", audited_as=None
    )
    audit.record_apart(
        db,
        "queue_purged",
        client=client,
        actor_id=audit.actor_id_of(by),
        queue=queue,
        cancelled=result.count,
        more=result.more,
        by=who(by),
    )
    return result


# --- retry --------------------------------------------------------------------------------


#: The columns a retry sets, each from a bound parameter of the same name with a `v_` prefix
#: (a parameter may not share a column's name in an UPDATE's SET clause).
_RENEWED = (
    "max_retries",
    "worker_losses",
    "status",
    "cancel_requested",
    "finished_at",
    "next_attempt_at",
    "lease_expires_at",
    "published_at",
    "result",
    "progress",
    "updated_at",
)
_RETRY = (
    update(jobs_t)
    .where(jobs_t.c.id == bindparam("b_id"), jobs_t.c.status == bindparam("b_status"))
    .values({name: bindparam(f"v_{name}") for name in _RENEWED})
)


def _renewed(row: Any, registry: Registry, now: dt.datetime) -> dict[str, Any] | None:
    """The parameters of `_RETRY` for a row; None when its type is unknown here."""
    if row.type not in registry:
        return None
    values = {
        # The retry rule counts failures over the job's life (attempts - worker losses -
        # handbacks). Worker losses start again from 0 and handbacks are kept, so a budget of
        # the failures so far, counted that way, gives the job its type's retries again.
        "max_retries": row.attempts
        - (row.handbacks or 0)
        + registry.get(row.type).retry.max_retries,
        "worker_losses": 0,
        "status": JobStatus.QUEUED.value,
        "cancel_requested": False,
        "finished_at": None,
        "next_attempt_at": None,
        "lease_expires_at": None,
        "published_at": None,
        "result": None,
        "progress": None,
        "updated_at": now,
    }
    return {"b_id": row.id, "b_status": row.status} | {f"v_{k}": v for k, v in values.items()}


def _retry_rows(session: Session, rows: Sequence[Any], registry: Registry, by: User) -> list[Any]:
    """Retry the locked `rows`; those it retried."""
    now = utcnow()
    values = [(row, _renewed(row, registry, now)) for row in rows]
    taken = [(row, v) for row, v in values if v is not None]
    if taken:
        session.execute(_RETRY, [v for _row, v in taken])
        session.execute(
            insert(events_t),
            [
                new_event(
                    row.id,
                    JobStatus.QUEUED,
                    row.attempts,
                    now,
                    message=f"retried by {who(by)} (was {row.status})",
                )
                for row, _v in taken
            ],
        )
    # A retried notification delivery job sends its delivery again: `pending`, not `failed`.
    notifications.reopen_for_jobs(session, [row.id for row, _v in taken])
    return [row for row, _v in taken]


def retry(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    announcer: Announcer,
    registry: Registry,
    job_id: uuid.UUID,
    by: User,
) -> Job:
    """A new attempt cycle for a `failed` or `cancelled` job, by its owner or an admin (see
    the module's docstring); 409 for any other status, 404 for another member's job. A job of
    an internal type may be retried too: it runs again with the payload Conveyor gave it (the
    owner of a notification retries its failed delivery)."""
    with transaction(db) as session:
        job = _visible(session.get(Job, job_id, with_for_update=True), by)
        if job.status not in RETRYABLE:
            raise ConflictError(
                f"the job is {job.status}; only a failed or cancelled job can be retried"
            )
        if job.type not in registry:
            raise ConflictError(f"job type {job.type!r} is not known to this server any more")
        _retry_rows(session, [job], registry, by)
        session.refresh(job)  # as the retry left it: a worker may take it once published
    announcer.announce(job_id, JobStatus.QUEUED)
    publish_now(db, enqueuer, [JobMessage(job.id, job.type, job.queue)], "retried")
    logger.info("job %s retried by %s", job_id, who(by))
    return job


def bulk_retry(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    announcer: Announcer,
    registry: Registry,
    by: User,
    where: JobFilter,
    *,
    limit: int = DEFAULT_BULK_LIMIT,
    client: audit.Client = audit.NOBODY,
    audited_as: str | None = "jobs_retried",
) -> BulkResult:
    """Retry the `failed` and `cancelled` jobs that match, up to `limit`, `BATCH` per
    transaction, each published after its batch commits. Written to the audit log as
    `audited_as` (None: the caller records its own action). Operators and admins only."""
    require_operator(by)
    _check_filter(where)
    limit = check_limit(limit)
    conditions = where.conditions(RETRYABLE)
    done = skipped = 0
    after: uuid.UUID | None = None
    more = False
    while True:
        size = min(BATCH, limit - done)
        if size == 0:
            more = _exists(db, conditions, after)
            break
        with transaction(db) as session:
            rows = session.execute(_batches(session, conditions, after, size)).all()
            if not rows:
                break
            after = rows[-1].id
            retried = _retry_rows(session, rows, registry, by)
        for row in retried:
            announcer.announce(row.id, JobStatus.QUEUED)
        if retried:
            messages = [JobMessage(r.id, r.type, r.queue) for r in retried]
            publish_now(db, enqueuer, messages, "retried")
        done += len(retried)
        skipped += len(rows) - len(retried)
        if len(rows) < size:
            break
    logger.info(
        "bulk retry by %s: %d job(s) retried, %d of unknown types left alone (%s)",
        who(by),
        done,
        skipped,
        where.describe(),
    )
    if audited_as is not None:
        audit.record_apart(
            db,
            audited_as,
            client=client,
            actor_id=audit.actor_id_of(by),
            filter=where.describe(),
            retried=done,
            skipped=skipped,
            more=more,
        )
    return BulkResult(done, more, skipped=skipped)


def _exists(
    db: sessionmaker[Session], conditions: list[ColumnElement[bool]], after: uuid.UUID | None
) -> bool:
    stmt = select(jobs_t.c.id).where(*conditions).limit(1)
    if after is not None:
        stmt = stmt.where(jobs_t.c.id > after)
    with db() as session:
        return session.scalar(stmt) is not None


def owner_id_of(db: sessionmaker[Session], owner: str) -> uuid.UUID:
    """The id of the user `owner` names (an email or an id); 422 naming `owner` if none."""
    with db() as session:
        try:
            user = session.get(User, uuid.UUID(owner))
        except ValueError:
            user = session.scalars(select(User).where(User.email == owner.strip().lower())).first()
    if user is None:
        raise InvalidRequestError(
            f"no user {owner!r}", errors=[{"field": "owner", "message": "no such user"}]
        )
    return user.id


def find(db: sessionmaker[Session], by: User, where: JobFilter, *, limit: int = 50) -> list[Job]:
    """The newest jobs that match (any status unless `where` names some), without their
    payload and result; operators and admins only (the operations CLI)."""
    require_operator(by)
    query = (
        select(Job)
        .where(*where.conditions(tuple(JobStatus)))
        .order_by(Job.id.desc())
        .limit(limit)
        .options(defer(Job.payload, raiseload=True), defer(Job.result, raiseload=True))
    )
    with db() as session:
        return list(session.scalars(query))


def last_events(db: sessionmaker[Session], job_id: uuid.UUID, limit: int = 50) -> list[JobEvent]:
    """The job's newest `limit` events, oldest first (no visibility check: the caller read
    the job first)."""
    with db() as session:
        newest = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.id.desc())
            .limit(limit)
        )
        return list(reversed(list(newest)))
