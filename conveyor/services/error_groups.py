"""Failures grouped by job type and error type (the exception's class), with their counts,
when they were first and last seen, and a sample; and what operators do to a whole group:
retry it, or discard it.

A group is the `failed` jobs of one job type whose `error_type` (the `type` of their error,
kept in its own column) is the same. The groups are read from the partial index of failed
jobs by (type, error_type, finished_at, id), by index only, so listing them reads no job row;
a group's sample is its newest job, whose message and traceback come from its last event that
has a traceback (the job's error when none has one).

Retrying a group gives its jobs a new attempt cycle (`operations.bulk_retry`), unless its
job type is unknown to this server (409: its jobs could not run); discarding it
deletes them, and their events, in batches (as retention does). Both are for operators and
admins, act on at most `limit` jobs per call (`more` says whether some are left), and write
one audit event naming the group and the count. Both take `up_to`, the newest failure the
operator saw (the group's `last_seen` on the page they confirmed): a job that failed after
it is left alone, as the operator has not seen it.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, tuple_
from sqlalchemy.orm import Session, defer, sessionmaker

from conveyor.announcements import Announcer
from conveyor.db import bound, transaction
from conveyor.errors import ConflictError
from conveyor.models import Job, JobEvent, JobStatus, User
from conveyor.models.job import jobs_t
from conveyor.registry import Registry
from conveyor.services import audit, operations
from conveyor.services.audit import Client
from conveyor.services.jobs import Enqueuer, rowcount
from conveyor.services.operations import (
    BATCH,
    DEFAULT_BULK_LIMIT,
    BulkResult,
    JobFilter,
    require_operator,
    who,
)

logger = logging.getLogger(__name__)

#: Longest a reading of the groups may take (each statement, on PostgreSQL).
TIMEOUT_SECONDS = 5.0
#: The most groups one call lists.
MAX_GROUPS = 1000


@dataclass(frozen=True)
class ErrorGroup:
    """The failed jobs of one job type with one error type (None: their error named none)."""

    job_type: str
    error_type: str | None
    count: int
    first_seen: dt.datetime  #: when the group's oldest job failed
    last_seen: dt.datetime  #: when its newest job failed
    sample_id: uuid.UUID  #: the newest job
    message: str | None = None  #: the sample's error message
    traceback: str | None = None  #: the sample's traceback (only from `group`)


def _failed() -> ColumnElement[bool]:
    # Spelled as the partial index's predicate, so the index serves the query.
    return jobs_t.c.status.in_([JobStatus.FAILED.value])


def _in_group(job_type: str, error_type: str | None) -> list[ColumnElement[bool]]:
    kind = (
        jobs_t.c.error_type.is_(None) if error_type is None else jobs_t.c.error_type == error_type
    )
    return [_failed(), jobs_t.c.type == job_type, kind]


def _newest(job_type: str, error_type: str | None, session: Session) -> uuid.UUID | None:
    return session.scalar(
        select(jobs_t.c.id)
        .where(*_in_group(job_type, error_type))
        .order_by(jobs_t.c.finished_at.desc(), jobs_t.c.id.desc())
        .limit(1)
    )


def _messages(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    """The error message of each job of `ids`."""
    rows = session.execute(select(jobs_t.c.id, jobs_t.c.error).where(jobs_t.c.id.in_(ids)))
    return {job_id: (error or {}).get("message") for job_id, error in rows}


def groups(
    db: sessionmaker[Session],
    *,
    limit: int = 100,
    timeout_seconds: float | None = TIMEOUT_SECONDS,
) -> list[ErrorGroup]:
    """The error groups, the most recently seen first (up to `limit`), each with its newest
    job as its sample and that job's error message."""
    limit = max(1, min(limit, MAX_GROUPS))
    grouped = (
        select(
            jobs_t.c.type,
            jobs_t.c.error_type,
            func.count().label("n"),
            func.min(jobs_t.c.finished_at).label("first_seen"),
            func.max(jobs_t.c.finished_at).label("last_seen"),
        )
        .where(_failed())
        .group_by(jobs_t.c.type, jobs_t.c.error_type)
        .order_by(func.max(jobs_t.c.finished_at).desc(), jobs_t.c.type, jobs_t.c.error_type)
        .limit(limit)
        .subquery()
    )
    # Each group's newest job, in the same statement: one probe of the index per group.
    newest = (
        select(jobs_t.c.id)
        .where(
            _failed(),
            jobs_t.c.type == grouped.c.type,
            jobs_t.c.error_type == grouped.c.error_type,
        )
        .order_by(jobs_t.c.finished_at.desc(), jobs_t.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = select(grouped, newest.label("sample")).order_by(
        grouped.c.last_seen.desc(), grouped.c.type, grouped.c.error_type
    )
    with db() as session:
        bound(session, timeout_seconds)
        rows = session.execute(query).all()
        samples = {
            (row.type, row.error_type): (
                row.sample
                if row.error_type is not None
                else _newest(row.type, None, session)  # `=` never matches NULL
            )
            for row in rows
        }
        messages = _messages(session, [i for i in samples.values() if i is not None])
    found = []
    for row in rows:
        sample = samples[(row.type, row.error_type)]
        if sample is None:  # the group's last job was retried or deleted meanwhile
            continue
        found.append(
            ErrorGroup(
                job_type=row.type,
                error_type=row.error_type,
                count=int(row.n),
                first_seen=row.first_seen,
                last_seen=row.last_seen,
                sample_id=sample,
                message=messages.get(sample),
            )
        )
    return found


def failed_by_type(
    db: sessionmaker[Session], *, timeout_seconds: float | None = TIMEOUT_SECONDS
) -> dict[str, int]:
    """How many failed jobs each job type has, read from the index of failed jobs only (the
    queues page sums them by the queue each type uses: far cheaper than grouping the failed
    rows by their `queue`, which the index does not hold)."""
    with db() as session:
        bound(session, timeout_seconds)
        rows = session.execute(
            select(jobs_t.c.type, func.count()).where(_failed()).group_by(jobs_t.c.type)
        )
        return {job_type: int(n) for job_type, n in rows}


def group(
    db: sessionmaker[Session],
    job_type: str,
    error_type: str | None,
    *,
    timeout_seconds: float | None = TIMEOUT_SECONDS,
) -> ErrorGroup | None:
    """One group, with its sample's message and traceback; None when it has no job."""
    where = _in_group(job_type, error_type)
    with db() as session:
        bound(session, timeout_seconds)
        row = session.execute(
            select(
                func.count(), func.min(jobs_t.c.finished_at), func.max(jobs_t.c.finished_at)
            ).where(*where)
        ).one()
        sample = _newest(job_type, error_type, session)
        if not row[0] or sample is None:
            return None
        found = ErrorGroup(job_type, error_type, int(row[0]), row[1], row[2], sample)
        message = _messages(session, [sample]).get(sample)
        event = session.execute(
            select(JobEvent.message, JobEvent.traceback)
            .where(JobEvent.job_id == sample, JobEvent.traceback.is_not(None))
            .order_by(JobEvent.id.desc())
            .limit(1)
        ).first()
    if event is not None:
        return replace(found, message=event.message or message, traceback=event.traceback)
    return replace(found, message=message)


def jobs_in_group(
    db: sessionmaker[Session],
    job_type: str,
    error_type: str | None,
    *,
    limit: int = 50,
    after: uuid.UUID | None = None,
    timeout_seconds: float | None = TIMEOUT_SECONDS,
) -> list[Job]:
    """The group's jobs, the most recently failed first, without their payload and result;
    `after` is the last job of the previous page (the next page starts after it)."""
    query = (
        select(Job)
        .where(*_in_group(job_type, error_type))
        .order_by(Job.finished_at.desc(), Job.id.desc())
        .limit(max(1, limit))
        .options(defer(Job.payload, raiseload=True), defer(Job.result, raiseload=True))
    )
    with db() as session:
        bound(session, timeout_seconds)
        if after is not None:
            finished_at = session.scalar(select(jobs_t.c.finished_at).where(jobs_t.c.id == after))
            if finished_at is None:
                return []  # not a job of the group (any more): no page follows it
            query = query.where(tuple_(Job.finished_at, Job.id) < tuple_(finished_at, after))
        return list(session.scalars(query))


# --- acting on a group ----------------------------------------------------------------------


def _record(
    db: sessionmaker[Session],
    action: str,
    by: User,
    client: Client,
    job_type: str,
    error_type: str | None,
    result: BulkResult,
    up_to: dt.datetime | None,
) -> None:
    bound_to: dict[str, Any] = {} if up_to is None else {"up_to": up_to.isoformat()}
    audit.record_apart(
        db,
        action,
        client=client,
        actor_id=by.id,
        job_type=job_type,
        error_type=error_type,
        count=result.count,
        more=result.more,
        **bound_to,
    )


def retry_group(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    announcer: Announcer,
    registry: Registry,
    job_type: str,
    error_type: str | None,
    by: User,
    *,
    limit: int = DEFAULT_BULK_LIMIT,
    up_to: dt.datetime | None = None,
    client: Client = audit.NOBODY,
) -> BulkResult:
    """Give up to `limit` failed jobs of the group, those that failed at or before `up_to`
    if given, a new attempt cycle each (see `operations.bulk_retry`), and record it in the
    audit log. Operators and admins only.

    ConflictError when this server does not know the group's job type (its code was removed,
    or is deployed elsewhere): none of its jobs could be retried, and reading them all, batch
    after batch, to skip each would only keep the request busy.
    """
    require_operator(by)
    if job_type not in registry:
        raise ConflictError(
            f"job type {job_type!r} is not known to this server any more: its jobs cannot be "
            "retried here (deploy the code that declares it, or discard the group)"
        )
    where = JobFilter(
        statuses=(JobStatus.FAILED.value,),
        types=(job_type,),
        error_types=(error_type,),
        finished_up_to=up_to,
    )
    result = operations.bulk_retry(
        db, enqueuer, announcer, registry, by, where, limit=limit, audited_as=None
    )
    _record(db, "error_group_retried", by, client, job_type, error_type, result, up_to)
    return result


def discard_group(
    db: sessionmaker[Session],
    job_type: str,
    error_type: str | None,
    by: User,
    *,
    limit: int = DEFAULT_BULK_LIMIT,
    up_to: dt.datetime | None = None,
    client: Client = audit.NOBODY,
) -> BulkResult:
    """Delete up to `limit` failed jobs of the group, those that failed at or before `up_to`
    if given, with their events, `BATCH` per transaction, and record it in the audit log.
    Operators and admins only."""
    require_operator(by)
    limit = operations.check_limit(limit)
    where = _in_group(job_type, error_type)
    if up_to is not None:
        where.append(jobs_t.c.finished_at <= up_to)
    done = 0
    while done < limit:
        size = min(BATCH, limit - done)
        chosen: Any = select(jobs_t.c.id).where(*where).order_by(jobs_t.c.id).limit(size)
        with transaction(db) as session:
            if session.get_bind().dialect.name == "postgresql":
                chosen = chosen.with_for_update(skip_locked=True)
            ids = list(session.scalars(chosen))
            if ids:
                # Their events go with them (ON DELETE CASCADE), as with retention.
                done += rowcount(
                    session.execute(delete(jobs_t).where(jobs_t.c.id.in_(ids), *where))
                )
        if len(ids) < size:
            break
    with db() as session:
        more = session.scalar(select(jobs_t.c.id).where(*where).limit(1)) is not None
    result = BulkResult(done, more)
    _record(db, "error_group_discarded", by, client, job_type, error_type, result, up_to)
    logger.info(
        "discard by %s: %d failed job(s) of %s with %s deleted",
        who(by),
        done,
        job_type,
        error_type,
    )
    return result
