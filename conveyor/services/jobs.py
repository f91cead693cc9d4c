"""Jobs as their owners see them: read, list, cancel, history; and what the job services
share (the broker message, the `Enqueuer` port, event rows).

The job row is the truth and the outbox: a message only says "run job X", and every
transition is a guarded UPDATE, so a duplicate or late message never moves a finished job.
Submissions are `services.submissions`; the worker's transitions `services.runs`.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, func, insert, select
from sqlalchemy.orm import Session, defer, sessionmaker

from conveyor.announcements import Announcer
from conveyor.db import transaction
from conveyor.errors import ConflictError, NotFoundError
from conveyor.models import Job, JobEvent, JobEventKind, JobStatus, Role, User
from conveyor.models.base import utcnow
from conveyor.models.job import FINISHED, WAITING, events_t
from conveyor.services.cursors import Cursors, Scope

logger = logging.getLogger(__name__)

#: The columns that may be large, which a listing reads only when asked to.
CONTENT = {"payload": Job.payload, "result": Job.result}
#: Rows read at a time by a listing that includes them.
CONTENT_BATCH = 10


@dataclass(frozen=True)
class JobMessage:
    """What goes on the broker for a job: its id, type and queue, and when to run it."""

    job_id: uuid.UUID
    type: str
    queue: str
    delay_ms: int = 0

    @classmethod
    def due_at(
        cls, job_id: uuid.UUID, type_: str, queue: str, due: dt.datetime | None, now: dt.datetime
    ) -> JobMessage:
        """The message of a job due at `due` (delivered then; at once if it is already due)."""
        delay_ms = 0
        if due is not None and due > now:
            delay_ms = int((due - now).total_seconds() * 1000)
        return cls(job_id, type_, queue, delay_ms)


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

    def broker_restarted(self) -> str | None:
        """A token when the broker may have lost messages it had confirmed since the last
        `restart_handled` (a Redis broker that restarted or was emptied); None otherwise, and
        always for a broker that keeps confirmed messages (RabbitMQ, the stub)."""

    def held_jobs(self, queue: str) -> set[uuid.UUID]:
        """Ids of the jobs whose messages the broker holds for `queue`: waiting, delayed, or
        fetched by a worker and not yet acknowledged."""

    def restart_handled(self, token: str) -> None:
        """Note that the waiting jobs were checked against the broker after that restart."""


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE matched."""
    return cast(CursorResult[Any], result).rowcount


def new_event(
    job_id: uuid.UUID,
    status: str,
    attempt: int,
    now: dt.datetime,
    *,
    kind: JobEventKind = JobEventKind.STATUS,
    progress: float | None = None,
    message: str | None = None,
    traceback: str | None = None,
) -> dict[str, Any]:
    """A `job_events` row, for a bulk INSERT in the transaction of the change it records."""
    return {
        "job_id": job_id,
        "at": now,
        "kind": kind.value,
        "status": status,
        "attempt": attempt,
        "progress": progress,
        "message": message[:1000] if message else None,
        "traceback": traceback,
    }


def _visible(job: Job | None, viewer: User) -> Job:
    if job is None or (not Role(viewer.role).sees_all_jobs and job.owner_id != viewer.id):
        raise NotFoundError("no such job")
    return job


def get(db: sessionmaker[Session], job_id: uuid.UUID, viewer: User) -> Job:
    """The job, if `viewer` may see it (members see their own jobs only)."""
    with db() as session:
        return _visible(session.get(Job, job_id), viewer)


def list_jobs(
    db: sessionmaker[Session],
    viewer: User,
    cursors: Cursors,
    *,
    statuses: Sequence[str] = (),
    types: Sequence[str] = (),
    parent_id: uuid.UUID | None = None,
    cursor: str | None = None,
    limit: int = 50,
    include: Collection[str] = (),
    take: Callable[[Job], bool] | None = None,
) -> Page:
    """Newest first, by keyset pagination on the time-ordered id; `parent_id` keeps the
    children of that job. `cursor` must be one `cursors` issued for the same filters.

    Of the large columns, only those named in `include` (`payload`, `result`) are read; the
    others stay unloaded (reading them raises). Those rows are read a few at a time, and
    `take(job)`, if given, is asked of each in turn: the page ends before the first job it
    refuses (it must take the first, or the listing could not move on).
    """
    scope = Scope.of(statuses, types, parent_id)
    query = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    unread = [column for name, column in CONTENT.items() if name not in include]
    query = query.options(*(defer(column, raiseload=True) for column in unread))
    if not Role(viewer.role).sees_all_jobs:
        query = query.where(Job.owner_id == viewer.id)
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if types:
        query = query.where(Job.type.in_(types))
    if parent_id is not None:
        query = query.where(Job.parent_id == parent_id)
    if cursor is not None:
        query = query.where(Job.id < cursors.read(cursor, scope))
    if include:  # rows that may be large: a few in memory at a time, not the whole page
        query = query.execution_options(yield_per=CONTENT_BATCH)
    page: list[Job] = []
    more = False
    with db() as session:
        for job in session.scalars(query):
            if len(page) == limit:
                more = True
                break
            if take is not None and not take(job):
                if not page:
                    raise ValueError("take() refused the first job: the listing cannot go on")
                more = True
                break
            page.append(job)
    return Page(page, cursors.issue(page[-1].id, scope) if more else None)


def cancel(
    db: sessionmaker[Session],
    announcer: Announcer,
    job_id: uuid.UUID,
    viewer: User,
    *,
    on_cancelled: Callable[[Job], object] | None = None,
) -> Job:
    """Cancel at once if the job waits; ask a running job to stop. Finished jobs: 409.
    `on_cancelled(job)` is called once the cancel of a waiting job is committed."""
    now = utcnow()
    ended = False
    with transaction(db) as session:
        job = _visible(session.get(Job, job_id, with_for_update=True), viewer)
        if job.status == JobStatus.CANCELLED:
            return job
        if job.status in FINISHED:
            raise ConflictError(f"the job already {job.status}; it cannot be cancelled")
        job.cancel_requested = True
        job.updated_at = now
        if job.status in WAITING:
            job.status = JobStatus.CANCELLED.value
            job.finished_at = now
            job.next_attempt_at = None
            session.execute(
                insert(events_t),
                [new_event(job.id, JobStatus.CANCELLED, job.attempts, now, message="cancelled")],
            )
            ended = True
        else:
            session.execute(
                insert(events_t),
                [new_event(job.id, job.status, job.attempts, now, message="cancel requested")],
            )
    announcer.announce(job.id, job.status)
    if ended and on_cancelled is not None:
        on_cancelled(job)
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


@dataclass(frozen=True)
class Changes:
    """What a watcher of a job read after a change, in one session."""

    job: Job | None  #: the row, if it was asked for (None too if the job is gone)
    events: list[JobEvent]  #: the events after the given id, oldest first
    newest: int  #: the id of the newest event read or asked for (0 if none)


def changes(
    db: sessionmaker[Session],
    job_id: uuid.UUID,
    *,
    with_job: bool,
    after: int | None = None,
    newest: bool = False,
    limit: int = 500,
) -> Changes:
    """In one session: the job's row if `with_job`; then its events after `after` (at most
    `limit`, oldest first) if given, or with `newest` only the id of its newest event. No
    visibility check: the web process shares this with requests that passed theirs."""
    with db() as session:
        job = session.get(Job, job_id) if with_job else None
        if after is not None:
            events = list(
                session.scalars(
                    select(JobEvent)
                    .where(JobEvent.job_id == job_id, JobEvent.id > after)
                    .order_by(JobEvent.id)
                    .limit(limit)
                )
            )
            return Changes(job, events, events[-1].id if events else after)
        if newest:
            found = session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id))
            return Changes(job, [], int(found or 0))
    return Changes(job, [], 0)
