"""What the admin's job pages read and do: jobs found by filter (and by the text of their
error), one job with its history and its children, and a retry or a cancel written to the
audit log.

The search is built to stay fast on millions of jobs: newest first, a page at a time by the
time-ordered id, and each filter served by an index:

- no filter, the page cursor and a creation time range: the primary key (ids are UUIDv7, so
  a range of creation times is a range of ids; `created_at` is then checked exactly);
- status: `ix_jobs_status_id`; type: `ix_jobs_type_id`; owner: `ix_jobs_owner_id_id`;
  parent: `ix_jobs_parent_id`;
- queue: a job's queue is its type's, so a queue is also looked for as the job types this
  server runs on it (`ix_jobs_type_id`); a queue that names no known job type is read by the
  primary key only, within the statement timeout;
- the error's text has no index: it is read only from the jobs that carry an error (failed,
  retrying, cancelled; `ix_jobs_status_id`), from at most `SCAN_WINDOW` of them a page (the
  newest that the other filters keep). A page that found fewer than it could show says how
  many jobs it looked through, and its next page looks further back.

On PostgreSQL each reading is bounded by `TIMEOUT_SECONDS` besides; a search that takes
longer answers 503 and asks for narrower filters.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, defer, sessionmaker

from conveyor.announcements import Announcer
from conveyor.db import bound
from conveyor.errors import InvalidRequestError, TransientError
from conveyor.models import Job, JobEvent, JobStatus, User
from conveyor.models.job import FINISHED, jobs_t
from conveyor.registry import Registry
from conveyor.services import audit, jobs, operations
from conveyor.services.audit import Client
from conveyor.services.jobs import Enqueuer
from conveyor.services.operations import JobFilter, require_operator

logger = logging.getLogger(__name__)

#: Longest a reading of the search may take (each statement, on PostgreSQL).
TIMEOUT_SECONDS = 5.0
#: The most jobs with an error one page of an error-text search looks through.
SCAN_WINDOW = 5000
#: The statuses of jobs that carry an error, which an error-text search reads.
WITH_ERRORS = (JobStatus.FAILED, JobStatus.RETRYING, JobStatus.CANCELLED)
#: How far an id's time may stray from its job's `created_at` (the id is made first).
ID_SLACK = dt.timedelta(minutes=1)
#: A job's children shown on its page.
CHILDREN = 50
#: A job's events shown on one page of its timeline.
EVENTS_PAGE = 200


@dataclass(frozen=True)
class Search:
    """What the jobs page looks for: the bulk operations' filter, plus the text of the
    error and the parent job."""

    where: JobFilter = field(default_factory=JobFilter)
    error_text: str = ""
    parent_id: uuid.UUID | None = None


@dataclass(frozen=True)
class SearchPage:
    """A page of jobs, newest first, and where the next one starts (None: this is the last)."""

    jobs: list[Job]
    next_before: uuid.UUID | None
    #: The email of each job's owner, by their id.
    owners: dict[uuid.UUID, str] = field(default_factory=dict)
    #: For an error-text search whose page ended for want of jobs to look through: how many
    #: it looked through (the next page looks at older ones).
    looked_through: int | None = None


def id_at(moment: dt.datetime) -> uuid.UUID:
    """The smallest UUIDv7 of `moment`'s millisecond: ids below it are of jobs made before.
    A time before 1970 is the first id of all (a UUIDv7 has no earlier one)."""
    ms = min(max(int(moment.timestamp() * 1000), 0), (1 << 48) - 1)
    return uuid.UUID(int=ms << 80 | 0x7 << 76 | 0b10 << 62)


def _moved(moment: dt.datetime, by: dt.timedelta) -> dt.datetime:
    """`moment + by`, stopped at the calendar's first or last moment (a filter may name
    0001-01-01 or 9999-12-31, and the slack must not take it past them)."""
    try:
        return moment + by
    except OverflowError:
        edge = dt.datetime.min if by < dt.timedelta(0) else dt.datetime.max
        return edge.replace(tzinfo=dt.UTC)


@contextmanager
def _reading(db: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose statements are bounded by `TIMEOUT_SECONDS` (PostgreSQL); a reading
    cut short is a 503 that asks for a narrower search."""
    with db() as session:
        bound(session, TIMEOUT_SECONDS)
        try:
            yield session
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "57014":  # query_canceled
                raise
            raise TransientError(
                f"the search took more than {TIMEOUT_SECONDS:.0f} s: narrow it (a status, a "
                "type, an owner or a time range)"
            ) from exc


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _error_contains(value: str) -> ColumnElement[bool]:
    pattern = f"%{_escaped(value)}%"
    message = jobs_t.c.error["message"].as_string()
    kind = jobs_t.c.error["type"].as_string()
    return or_(message.ilike(pattern, escape="\\"), kind.ilike(pattern, escape="\\"))


def _with_error_statuses(where: JobFilter) -> JobFilter:
    """`where` for an error-text search: only statuses whose jobs carry an error."""
    allowed = {s.value for s in WITH_ERRORS}
    if not where.statuses:
        return replace(where, statuses=tuple(s.value for s in WITH_ERRORS))
    if not set(where.statuses) <= allowed:
        names = ", ".join(sorted(allowed))
        raise InvalidRequestError(
            f"the error's text is searched in jobs that have an error only ({names})",
            errors=[{"field": "error", "message": f"only with the statuses {names}"}],
        )
    return where


def _conditions(
    registry: Registry, criteria: Search, before: uuid.UUID | None
) -> list[ColumnElement[bool]]:
    where = criteria.where
    conditions = where.conditions(tuple(JobStatus))
    if where.queues and not where.types:
        # The index of types serves a queue: its jobs are of the types that run on it.
        types = [t.name for t in registry if t.queue in where.queues]
        if types:
            conditions.append(jobs_t.c.type.in_(types))
    if where.created_after is not None:
        conditions.append(jobs_t.c.id >= id_at(_moved(where.created_after, -ID_SLACK)))
    if where.created_before is not None:
        conditions.append(jobs_t.c.id < id_at(_moved(where.created_before, ID_SLACK)))
    if criteria.parent_id is not None:
        conditions.append(jobs_t.c.parent_id == criteria.parent_id)
    if before is not None:
        conditions.append(jobs_t.c.id < before)
    return conditions


def search(
    db: sessionmaker[Session],
    registry: Registry,
    by: User,
    criteria: Search,
    *,
    before: uuid.UUID | None = None,
    limit: int = 50,
) -> SearchPage:
    """The newest jobs that match `criteria`, older than the job `before` (the page cursor), up
    to `limit`, without their payload and result (see the module docstring for how each
    filter is served). Operators and admins only."""
    require_operator(by)
    if criteria.error_text:
        criteria = replace(criteria, where=_with_error_statuses(criteria.where))
    conditions = _conditions(registry, criteria, before)
    query = (
        select(Job)
        .order_by(Job.id.desc())
        .limit(limit + 1)
        .options(defer(Job.payload, raiseload=True), defer(Job.result, raiseload=True))
    )
    oldest: uuid.UUID | None = None
    with _reading(db) as session:
        if criteria.error_text:
            # The oldest job of the window: the window ends there, or at the last job.
            oldest = session.scalar(
                select(jobs_t.c.id)
                .where(*conditions)
                .order_by(jobs_t.c.id.desc())
                .offset(SCAN_WINDOW - 1)
                .limit(1)
            )
            if oldest is not None:
                conditions.append(jobs_t.c.id >= oldest)
            conditions.append(_error_contains(criteria.error_text))
        found = list(session.scalars(query.where(*conditions)))
        owners = _emails(session, {job.owner_id for job in found[:limit]})
    if len(found) > limit:
        return SearchPage(found[:limit], found[limit - 1].id, owners)
    if oldest is not None:  # the window ended the page: older jobs are left
        return SearchPage(found, oldest, owners, looked_through=SCAN_WINDOW)
    return SearchPage(found, None, owners)


def _emails(session: Session, ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    if not ids:
        return {}
    rows = session.execute(select(User.id, User.email).where(User.id.in_(ids)))
    return {user_id: email for user_id, email in rows}


# --- one job ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPage:
    """A job as its page shows it."""

    job: Job
    owner: str  #: its owner's email
    events: list[JobEvent]  #: a page of its events, oldest first
    more_events: bool  #: whether newer events follow that page
    traceback: str | None  #: the traceback of its last failed attempt, if any
    children: list[Job]  #: its newest children
    more_children: bool


def job_page(
    db: sessionmaker[Session], by: User, job_id: uuid.UUID, *, events_after: int = 0
) -> JobPage:
    """The job (404 if there is none), the page of its events after the event `events_after`,
    its last traceback and its newest children. Operators and admins only."""
    require_operator(by)
    job = jobs.get(db, job_id, by)
    events = jobs.events_after(db, job_id, events_after, limit=EVENTS_PAGE + 1)
    with db() as session:
        traceback = session.scalar(
            select(JobEvent.traceback)
            .where(JobEvent.job_id == job_id, JobEvent.traceback.is_not(None))
            .order_by(JobEvent.id.desc())
            .limit(1)
        )
        owner = _emails(session, {job.owner_id}).get(job.owner_id, str(job.owner_id))
        children = list(
            session.scalars(
                select(Job)
                .where(Job.parent_id == job_id)
                .order_by(Job.id.desc())
                .limit(CHILDREN + 1)
                .options(defer(Job.payload, raiseload=True), defer(Job.result, raiseload=True))
            )
        )
    return JobPage(
        job=job,
        owner=owner,
        events=events[:EVENTS_PAGE],
        more_events=len(events) > EVENTS_PAGE,
        traceback=traceback,
        children=children[:CHILDREN],
        more_children=len(children) > CHILDREN,
    )


def _record(
    db: sessionmaker[Session], action: str, by: User, client: Client, job: Job, **details: object
) -> None:
    audit.record_apart(
        db,
        action,
        client=client,
        actor_id=by.id,
        subject_id=job.owner_id,
        job_id=str(job.id),
        job_type=job.type,
        **details,
    )


def retry(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    announcer: Announcer,
    registry: Registry,
    job_id: uuid.UUID,
    by: User,
    *,
    client: Client = audit.NOBODY,
) -> Job:
    """Retry a failed or cancelled job (`operations.retry`) and write `job_retried` to the
    audit log. Operators and admins only."""
    require_operator(by)
    job = operations.retry(db, enqueuer, announcer, registry, job_id, by)
    _record(db, "job_retried", by, client, job)
    return job


def cancel(
    db: sessionmaker[Session],
    announcer: Announcer,
    job_id: uuid.UUID,
    by: User,
    *,
    client: Client = audit.NOBODY,
    on_cancelled: Callable[[Job], object] | None = None,
) -> Job:
    """Cancel a waiting job, or ask a running one to stop (`jobs.cancel`, which calls
    `on_cancelled` as it says), and write `job_cancelled` to the audit log (with `stopping`
    for a running job). Operators and admins only."""
    require_operator(by)
    job = jobs.cancel(db, announcer, job_id, by, on_cancelled=on_cancelled)
    _record(db, "job_cancelled", by, client, job, stopping=job.status not in FINISHED)
    return job
