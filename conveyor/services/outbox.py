"""The outbox sweep, delayed jobs and the reconciler: no committed job is left without a
message.

`publish_pending` publishes jobs whose message was never confirmed (a crash between commit
and publish, a broker outage, a lost retry message); `republish_lost` those whose confirmed
message a broker lost with its data (a Redis broker restarted or emptied); `promote_due`
queues and publishes the scheduled jobs whose time has come; `expire_leases` returns the jobs
of dead workers to the queue, or fails them once they lost too many.

The jobs of a paused queue are left unpublished ("parked") by all of them: its workers would
take none, and a message sent now would only come back. `publish_parked` sends them at once
when the queue is resumed.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.announcements import Announcer
from conveyor.db import transaction
from conveyor.errors import BrokerUnavailableError
from conveyor.logs import job_fields
from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.models.job import OUTBOX, error_type_of, events_t, jobs_t
from conveyor.models.queue import is_paused, queue_pauses_t
from conveyor.services import outcomes
from conveyor.services.jobs import Enqueuer, JobMessage, new_event

logger = logging.getLogger(__name__)


def _locked(session: Session, stmt: object) -> object:
    """FOR UPDATE SKIP LOCKED where the database has it, so several sweepers share work."""
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=True)  # type: ignore[attr-defined]
    return stmt


def publish_pending(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    *,
    grace: dt.timedelta,
    requeue_after: dt.timedelta,
    limit: int = 500,
) -> bool:
    """Publish waiting jobs that have no confirmed message, but those of paused queues; True
    if a whole batch was taken (there may be more).

    A job whose message was confirmed more than `requeue_after` ago and that never started
    may have lost its message, or may simply wait in a long queue: it is published again
    only if its broker queue holds no waiting message; otherwise it is looked at again after
    another `requeue_after`. Raises whatever the broker raises; the rows stay as they were
    and the next sweep retries.
    """
    now = utcnow()
    stale = now - requeue_after
    stmt = (
        select(
            jobs_t.c.id,
            jobs_t.c.type,
            jobs_t.c.queue,
            jobs_t.c.next_attempt_at,
            jobs_t.c.published_at,
        )
        .where(
            jobs_t.c.status.in_(OUTBOX),
            ~is_paused(jobs_t.c.queue),
            or_(
                and_(jobs_t.c.published_at.is_(None), jobs_t.c.updated_at <= now - grace),
                and_(
                    jobs_t.c.published_at < stale,
                    or_(jobs_t.c.next_attempt_at.is_(None), jobs_t.c.next_attempt_at < stale),
                ),
            ),
        )
        .order_by(jobs_t.c.published_at.nulls_first(), jobs_t.c.id)
        .limit(limit)
    )
    with transaction(db) as session:
        rows = session.execute(_locked(session, stmt)).all()  # type: ignore[call-overload]
        if not rows:
            return False
        depths: dict[str, int | None] = {}
        for queue in {r.queue for r in rows if r.published_at is not None}:
            depths[queue] = enqueuer.waiting(queue)
        due = [r for r in rows if r.published_at is None or not depths[r.queue]]
        if due:
            enqueuer.publish(
                [JobMessage.due_at(r.id, r.type, r.queue, r.next_attempt_at, now) for r in due]
            )
        mark_published(session, [r.id for r in rows])  # published, or to look at again later
    logger.info("published %d job(s) from the outbox", len(due))
    return len(rows) == limit


def republish_lost(db: sessionmaker[Session], enqueuer: Enqueuer, *, limit: int = 500) -> int:
    """If the broker may have lost messages it had confirmed (`Enqueuer.broker_restarted`),
    publish again each waiting job whose message it no longer holds; how many. The jobs of a
    paused queue are left as they are: the resume publishes those its workers parked, and a
    message lost meanwhile is found again by the sweep (its `requeue_after`).

    Only jobs marked published before the loss was noticed are compared: a later one was
    published to the broker as it is now. A job claimed while this runs may get a message
    it no longer needs, which the claim drops. Several web processes may run this at once:
    rows are taken FOR UPDATE SKIP LOCKED and stamped published, so a job that one of them
    published again is newer than what the other noticed, and is left alone (at worst a
    duplicate message). The restart counts as handled only once every queue was checked;
    a failure leaves it to the next pass.
    """
    restart = enqueuer.broker_restarted()
    if restart is None:
        return 0
    noticed = utcnow()
    waiting = (
        jobs_t.c.status.in_(OUTBOX),
        jobs_t.c.published_at <= noticed,
        ~is_paused(jobs_t.c.queue),
    )
    with db() as session:
        queues = sorted(session.scalars(select(jobs_t.c.queue).where(*waiting).distinct()))
    lost = 0
    for queue in queues:
        held = enqueuer.held_jobs(queue)
        after: uuid.UUID | None = None
        while True:
            stmt = select(
                jobs_t.c.id, jobs_t.c.type, jobs_t.c.queue, jobs_t.c.next_attempt_at
            ).where(*waiting, jobs_t.c.queue == queue)
            if after is not None:
                stmt = stmt.where(jobs_t.c.id > after)
            stmt = stmt.order_by(jobs_t.c.id).limit(limit)
            with transaction(db) as session:
                rows = session.execute(_locked(session, stmt)).all()  # type: ignore[call-overload]
                gone = [r for r in rows if r.id not in held]
                if gone:
                    now = utcnow()
                    enqueuer.publish(
                        [
                            JobMessage.due_at(r.id, r.type, r.queue, r.next_attempt_at, now)
                            for r in gone
                        ]
                    )
                    mark_published(session, [r.id for r in gone])
            lost += len(gone)
            if len(rows) < limit:
                break
            after = rows[-1].id
    enqueuer.restart_handled(restart)
    if lost:
        logger.warning(
            "the broker lost the messages of %d waiting job(s) (it restarted without them, or "
            "was emptied); published them again",
            lost,
        )
    else:
        logger.info("the broker restarted or is new; it holds the message of every waiting job")
    return lost


def publish_now(
    db: sessionmaker[Session], enqueuer: Enqueuer, messages: list[JobMessage], what: str
) -> None:
    """Publish the messages of jobs just committed unpublished, and mark them published. A
    failure leaves the rows as they are: the outbox sweep publishes them once it can."""
    try:
        enqueuer.publish(messages)
    except BrokerUnavailableError as exc:  # an outage, which the enqueuer logged once
        logger.debug("could not publish %d %s job(s) yet: %r", len(messages), what, exc)
        return
    except Exception:
        logger.warning(
            "could not publish %d %s job(s) yet; left to the sweep",
            len(messages),
            what,
            exc_info=True,
        )
        return
    with transaction(db) as session:
        mark_published(session, [m.job_id for m in messages])


def mark_published(
    session: Session, job_ids: Iterable[uuid.UUID], *, first_only: bool = False
) -> None:
    """Note that these jobs' messages were confirmed by the broker. With `first_only`, only
    for jobs still waiting for their first run: a late confirmation of a job's first message
    must not pass for the message of a retry that failed to publish.

    Never for a job of a paused queue: its worker may have parked it already (the message
    taken and acknowledged), and a stamp now would hide it from the resume. At worst the
    resume publishes a job whose message still waits: a duplicate, which the claim skips."""
    ids = list(job_ids)
    if ids:
        stmt = update(jobs_t).where(
            jobs_t.c.id.in_(ids), jobs_t.c.status.in_(OUTBOX), ~is_paused(jobs_t.c.queue)
        )
        if first_only:
            stmt = stmt.where(jobs_t.c.attempts == 0, jobs_t.c.status == JobStatus.QUEUED)
        session.execute(stmt.values(published_at=utcnow()))


def promote_due(
    db: sessionmaker[Session], enqueuer: Enqueuer, announcer: Announcer, *, limit: int = 500
) -> bool:
    """Queue the scheduled jobs that are due, and publish them; True if a whole batch was
    taken (there may be more).

    The promotion commits first; the messages go out after, and one that fails leaves its job
    queued and unpublished, for `publish_pending`. The jobs of a paused queue are queued but
    not published: they wait, parked, for the queue's resume.
    """
    now = utcnow()
    stmt = (
        select(jobs_t.c.id, jobs_t.c.type, jobs_t.c.queue)
        .where(jobs_t.c.status == JobStatus.SCHEDULED, jobs_t.c.next_attempt_at <= now)
        .order_by(jobs_t.c.next_attempt_at)
        .limit(limit)
    )
    with transaction(db) as session:
        taken = session.execute(_locked(session, stmt)).all()  # type: ignore[call-overload]
        if not taken:
            return False
        moved = set(
            session.scalars(
                update(jobs_t)
                .where(
                    jobs_t.c.id.in_([r.id for r in taken]),
                    jobs_t.c.status == JobStatus.SCHEDULED,  # not cancelled meanwhile
                )
                .values(status=JobStatus.QUEUED.value, next_attempt_at=None, updated_at=now)
                .returning(jobs_t.c.id)
            )
        )
        rows = [r for r in taken if r.id in moved]
        if rows:
            session.execute(
                insert(events_t),
                [new_event(r.id, JobStatus.QUEUED, 0, now, message="due") for r in rows],
            )
        paused = set(session.scalars(select(queue_pauses_t.c.queue)))
    if not rows:
        return len(taken) == limit
    for row in rows:
        announcer.announce(row.id, JobStatus.QUEUED)
    due = [JobMessage(r.id, r.type, r.queue) for r in rows if r.queue not in paused]
    if due:
        publish_now(db, enqueuer, due, "due")
    logger.info("queued %d scheduled job(s) that came due", len(rows))
    return len(taken) == limit


def publish_parked(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    queue: str,
    *,
    limit: int = 500,
    most: int | None = None,
) -> int:
    """Publish the waiting jobs of `queue` that have no message (parked while it was paused),
    `limit` per transaction, each with its due time, up to about `most` of them; how many.
    What it leaves (past `most`, or when the broker fails) stays unpublished, for the outbox
    sweep."""
    published = 0
    after: uuid.UUID | None = None
    while True:
        now = utcnow()
        # By id, each job once: should the queue be paused again meanwhile, its jobs are not
        # marked published, and would otherwise be taken again and again.
        stmt = select(jobs_t.c.id, jobs_t.c.type, jobs_t.c.queue, jobs_t.c.next_attempt_at).where(
            jobs_t.c.queue == queue,
            jobs_t.c.status.in_(OUTBOX),
            jobs_t.c.published_at.is_(None),
        )
        if after is not None:
            stmt = stmt.where(jobs_t.c.id > after)
        stmt = stmt.order_by(jobs_t.c.id).limit(limit)
        with transaction(db) as session:
            rows = session.execute(_locked(session, stmt)).all()  # type: ignore[call-overload]
            if not rows:
                break
            after = rows[-1].id
            try:
                enqueuer.publish(
                    [JobMessage.due_at(r.id, r.type, r.queue, r.next_attempt_at, now) for r in rows]
                )
            except Exception:
                logger.warning(
                    "could not publish the %d waiting job(s) of queue %s yet; left to the sweep",
                    len(rows),
                    queue,
                    exc_info=True,
                )
                break
            mark_published(session, [r.id for r in rows])
        published += len(rows)
        if len(rows) < limit or (most is not None and published >= most):
            break
    return published


def next_due(db: sessionmaker[Session]) -> dt.datetime | None:
    """When the earliest scheduled job is due (None when there is none)."""
    with db() as session:
        first: dt.datetime | None = session.scalar(
            select(func.min(jobs_t.c.next_attempt_at)).where(jobs_t.c.status == JobStatus.SCHEDULED)
        )
    return first


def flush_confirmed(db: sessionmaker[Session], enqueuer: Enqueuer) -> None:
    """Stamp `published_at` on the jobs whose `publish_soon` the broker confirmed."""
    confirmed = enqueuer.take_confirmed()
    if confirmed:
        with transaction(db) as session:
            mark_published(session, confirmed, first_only=True)


def expire_leases(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    announcer: Announcer,
    *,
    max_worker_losses: int,
    limit: int = 200,
    on_finished: Callable[[str, JobStatus], object] | None = None,
) -> int:
    """Handle running jobs whose lease ran out (their worker died or hung), as the policy's
    `outcomes.lost_worker` decides: run again now, cancelled, or failed. `on_finished(type,
    status)` is called for each job it ended, once committed."""
    now = utcnow()
    stmt = (
        select(
            jobs_t.c.id,
            jobs_t.c.type,
            jobs_t.c.queue,
            jobs_t.c.attempts,
            jobs_t.c.worker_losses,
            jobs_t.c.cancel_requested,
        )
        .where(jobs_t.c.status == JobStatus.RUNNING, jobs_t.c.lease_expires_at < now)
        .limit(limit)
    )
    changed: list[tuple[uuid.UUID, JobStatus]] = []
    ended: list[tuple[str, JobStatus]] = []
    retry: list[JobMessage] = []
    with transaction(db) as session:
        for row in session.execute(_locked(session, stmt)).all():  # type: ignore[call-overload]
            outcome = outcomes.lost_worker(
                row.attempts,
                row.worker_losses,
                cancel_requested=row.cancel_requested,
                max_worker_losses=max_worker_losses,
            )
            values: dict[str, Any]
            if outcome.status == JobStatus.RETRYING:
                values = {"next_attempt_at": now, "published_at": None}
                retry.append(JobMessage(row.id, row.type, row.queue))
            else:
                values = {"finished_at": now}
                ended.append((row.type, outcome.status))
            session.execute(
                update(jobs_t)
                .where(
                    jobs_t.c.id == row.id,
                    jobs_t.c.status == JobStatus.RUNNING,
                    jobs_t.c.attempts == row.attempts,
                )
                .values(
                    status=outcome.status.value,
                    error=outcome.error,
                    error_type=error_type_of(outcome.error),
                    updated_at=now,
                    lease_expires_at=None,
                    worker_losses=row.worker_losses + 1,
                    **values,
                )
            )
            message = outcome.error["message"] if outcome.error else None
            session.execute(
                insert(events_t),
                [new_event(row.id, outcome.status, row.attempts, now, message=message)],
            )
            changed.append((row.id, outcome.status))
    for job_id, status in changed:
        logger.warning("job %s lost its worker; now %s", job_id, status, extra=job_fields(job_id))
        announcer.announce(job_id, status)
    if on_finished is not None:
        for type_, status in ended:
            on_finished(type_, status)
    if retry:
        publish_now(db, enqueuer, retry, "re-queued")
    return len(changed)


def requeue_unfinished(db: sessionmaker[Session]) -> None:
    """After a restart of the embedded mode (whose in-memory broker lost its messages):
    mark every waiting job unpublished and let running ones be reclaimed at once."""
    now = utcnow()
    with transaction(db) as session:
        session.execute(update(jobs_t).where(jobs_t.c.status.in_(OUTBOX)).values(published_at=None))
        session.execute(
            update(jobs_t)
            .where(jobs_t.c.status == JobStatus.RUNNING)
            .values(lease_expires_at=now - dt.timedelta(seconds=1))
        )
