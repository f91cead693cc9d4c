"""Queues as operators see them: jobs waiting, scheduled, running and failed per queue, and
how long the oldest waiting job has waited. Read from the database (the row is the truth),
so it is the same on RabbitMQ and Redis.

The counts read only jobs not finished, through partial indexes (`ix_jobs_unstarted_queue_
status_due`, the running jobs' lease index); the failed count, which reads the failed jobs
kept, only when asked (`conveyor queues`, not the metrics).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import bound
from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.models.job import OUTBOX, UNSTARTED, jobs_t

#: When a job not started yet is due, spelled as its index spells it.
DUE = func.coalesce(jobs_t.c.next_attempt_at, jobs_t.c.run_at, jobs_t.c.created_at)


@dataclass
class QueueStats:
    """One queue's jobs. `oldest_waiting_seconds` is 0 when nothing waits; `failed` is None
    unless it was asked for."""

    queue: str
    waiting: int = 0  #: queued, or retrying and due: a worker may start them now
    scheduled: int = 0  #: delayed (run_at ahead), or retrying later
    running: int = 0
    failed: int | None = None
    oldest_waiting_seconds: float = 0.0


def stats(
    db: sessionmaker[Session],
    queues: Iterable[str] = (),
    *,
    failed: bool = False,
    timeout_seconds: float | None = None,
) -> list[QueueStats]:
    """Every queue of `queues`, and every other queue that holds unfinished jobs, by name.
    `timeout_seconds` bounds each statement (PostgreSQL)."""
    now = utcnow()
    found = {name: QueueStats(name) for name in queues}
    oldest: dict[str, dt.datetime] = {}
    ready = (DUE <= now).label("ready")
    with db() as session:
        _limit(session, timeout_seconds)
        unstarted = session.execute(
            select(jobs_t.c.queue, jobs_t.c.status, ready, func.count(), func.min(DUE))
            .where(jobs_t.c.status.in_(UNSTARTED))
            .group_by(jobs_t.c.queue, jobs_t.c.status, ready)
        )
        for queue, status, is_ready, n, first_due in unstarted:
            entry = found.setdefault(queue, QueueStats(queue))
            if status in OUTBOX and is_ready:
                entry.waiting += n
                if queue not in oldest or first_due < oldest[queue]:
                    oldest[queue] = first_due
            else:
                entry.scheduled += n
        by_status = [JobStatus.RUNNING, *([JobStatus.FAILED] if failed else [])]
        for status in by_status:
            rows = session.execute(
                select(jobs_t.c.queue, func.count())
                .where(jobs_t.c.status == status)
                .group_by(jobs_t.c.queue)
            )
            for queue, n in rows:
                entry = found.setdefault(queue, QueueStats(queue))
                if status == JobStatus.RUNNING:
                    entry.running = n
                else:
                    entry.failed = n
    for queue, first_due in oldest.items():
        found[queue].oldest_waiting_seconds = max((now - first_due).total_seconds(), 0.0)
    if failed:
        for entry in found.values():
            entry.failed = entry.failed or 0
    return [found[name] for name in sorted(found)]


def unpublished(db: sessionmaker[Session], *, timeout_seconds: float | None = None) -> int:
    """Waiting jobs whose message the broker has not confirmed yet (the outbox)."""
    with db() as session:
        _limit(session, timeout_seconds)
        n = session.scalar(
            select(func.count()).where(jobs_t.c.status.in_(OUTBOX), jobs_t.c.published_at.is_(None))
        )
    return int(n or 0)


_limit = bound
