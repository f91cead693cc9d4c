"""The outbox sweep and the reconciler: no committed job is left without a message.

`publish_pending` publishes jobs whose message was never confirmed (a crash between commit
and publish, a broker outage, a lost retry message); `expire_leases` returns the jobs of dead
workers to the queue, or fails them once their attempts are spent.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.models.job import PENDING
from conveyor.services.jobs import Enqueuer, JobMessage, Notifier, _event, events_t, jobs_t

logger = logging.getLogger(__name__)


def _locked(session: Session, stmt: object) -> object:
    """FOR UPDATE SKIP LOCKED where the database has it, so several sweepers share work."""
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=True)  # type: ignore[attr-defined]
    return stmt


def message_for(
    job_id: uuid.UUID, type_: str, queue: str, next_attempt_at: dt.datetime | None, now: dt.datetime
) -> JobMessage:
    delay = 0
    if next_attempt_at is not None and next_attempt_at > now:
        delay = int((next_attempt_at - now).total_seconds() * 1000)
    return JobMessage(job_id, type_, queue, delay)


def publish_pending(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    *,
    grace: dt.timedelta,
    requeue_after: dt.timedelta,
    limit: int = 500,
) -> bool:
    """Publish waiting jobs that have no confirmed message; True if a whole batch was taken
    (there may be more).

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
            jobs_t.c.status.in_(PENDING),
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
                [message_for(r.id, r.type, r.queue, r.next_attempt_at, now) for r in due]
            )
        mark_published(session, [r.id for r in rows])  # published, or to look at again later
    logger.info("published %d job(s) from the outbox", len(due))
    return len(rows) == limit


def mark_published(
    session: Session, job_ids: Iterable[uuid.UUID], *, first_only: bool = False
) -> None:
    """Note that these jobs' messages were confirmed by the broker. With `first_only`, only
    for jobs still waiting for their first run: a late confirmation of a job's first message
    must not pass for the message of a retry that failed to publish."""
    ids = list(job_ids)
    if ids:
        stmt = update(jobs_t).where(jobs_t.c.id.in_(ids), jobs_t.c.status.in_(PENDING))
        if first_only:
            stmt = stmt.where(jobs_t.c.attempts == 0, jobs_t.c.status == JobStatus.QUEUED)
        session.execute(stmt.values(published_at=utcnow()))


def expire_leases(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    notifier: Notifier,
    *,
    max_worker_losses: int,
    limit: int = 200,
) -> int:
    """Handle running jobs whose lease ran out (their worker died or hung).

    A lost worker is counted apart from the job's own failures, so a crash or a deploy does
    not use up its retries: the job goes back to `retrying` and is published now. After
    `max_worker_losses` losses it ends `failed`, so a job that kills its worker again and
    again stops instead of looping.
    """
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
    retry: list[JobMessage] = []
    with transaction(db) as session:
        for row in session.execute(_locked(session, stmt)).all():  # type: ignore[call-overload]
            error = {
                "type": "WorkerLost",
                "message": f"the worker of attempt {row.attempts} stopped without finishing it",
            }
            values: dict[str, Any]
            if row.cancel_requested:
                status, values = JobStatus.CANCELLED, {"finished_at": now}
            elif row.worker_losses >= max_worker_losses:
                status, values = JobStatus.FAILED, {"finished_at": now}
                error["message"] += f" ({row.worker_losses + 1} workers lost running this job)"
            else:
                status, values = JobStatus.RETRYING, {"next_attempt_at": now, "published_at": None}
                retry.append(JobMessage(row.id, row.type, row.queue))
            session.execute(
                update(jobs_t)
                .where(
                    jobs_t.c.id == row.id,
                    jobs_t.c.status == JobStatus.RUNNING,
                    jobs_t.c.attempts == row.attempts,
                )
                .values(
                    status=status.value,
                    error=error,
                    updated_at=now,
                    lease_expires_at=None,
                    worker_losses=row.worker_losses + 1,
                    **values,
                )
            )
            session.execute(
                insert(events_t),
                [_event(row.id, status, row.attempts, now, message=error["message"])],
            )
            changed.append((row.id, status))
    for job_id, status in changed:
        logger.warning("job %s lost its worker; now %s", job_id, status)
        notifier.publish(job_id, status)
    if retry:
        try:
            enqueuer.publish(retry)
        except Exception:  # the sweep publishes them once the broker is back
            logger.warning("could not publish %d re-queued job(s) yet", len(retry), exc_info=True)
        else:
            with transaction(db) as session:
                mark_published(session, [m.job_id for m in retry])
    return len(changed)


def requeue_unfinished(db: sessionmaker[Session]) -> None:
    """After a restart of the embedded mode (whose in-memory broker lost its messages):
    mark every waiting job unpublished and let running ones be reclaimed at once."""
    now = utcnow()
    with transaction(db) as session:
        session.execute(
            update(jobs_t).where(jobs_t.c.status.in_(PENDING)).values(published_at=None)
        )
        session.execute(
            update(jobs_t)
            .where(jobs_t.c.status == JobStatus.RUNNING)
            .values(lease_expires_at=now - dt.timedelta(seconds=1))
        )
