"""Queues as operators see them: jobs waiting, scheduled, running and failed per queue, how
long the oldest waiting job has waited, whether the queue is paused, and the live worker
processes consuming it. Read from the database (the row is the truth), so it is the same on
RabbitMQ and Redis.

The counts read only jobs not finished, through partial indexes (`ix_jobs_unstarted_queue_
status_due`, the running jobs' lease index); the failed count, which reads the failed jobs
kept, only when asked (`conveyor queues`, not the metrics).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.models.job import OUTBOX, UNSTARTED, jobs_t
from conveyor.models.queue import is_paused, queue_pauses_t
from conveyor.models.worker import Worker
from conveyor.services import workers

#: When a job not started yet is due, spelled as its index spells it.
DUE = func.coalesce(jobs_t.c.next_attempt_at, jobs_t.c.run_at, jobs_t.c.created_at)


@dataclass
class QueueStats:
    """One queue's jobs. `oldest_waiting_seconds` is 0 when nothing waits; `failed` is None
    unless it was asked for, and so are `consumers` and `consumer_threads`."""

    queue: str
    waiting: int = 0  #: queued, or retrying and due: a worker may start them now (unless paused)
    scheduled: int = 0  #: delayed (run_at ahead), or retrying later
    running: int = 0
    failed: int | None = None
    oldest_waiting_seconds: float = 0.0
    #: Paused: its workers take none of its jobs (`services.queue_pauses`); since when, why.
    paused: bool = False
    paused_at: dt.datetime | None = None
    pause_reason: str | None = None
    #: Live worker processes that consume the queue, and their threads together.
    consumers: int | None = None
    consumer_threads: int | None = None


def stats(
    db: sessionmaker[Session],
    queues: Iterable[str] = (),
    *,
    failed: bool = False,
    workers_within: dt.timedelta | None = None,
    timeout_seconds: float | None = None,
) -> list[QueueStats]:
    """Every queue of `queues`, and every other queue that holds unfinished jobs or is paused,
    by name. With `workers_within` (the worker timeout), the consumers of each: the worker
    processes heard from within it. `timeout_seconds` bounds each statement (PostgreSQL)."""
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
        pauses = select(queue_pauses_t.c.queue, queue_pauses_t.c.paused_at, queue_pauses_t.c.reason)
        for queue, paused_at, reason in session.execute(pauses):
            entry = found.setdefault(queue, QueueStats(queue))
            entry.paused, entry.paused_at, entry.pause_reason = True, paused_at, reason
    if workers_within is not None:
        _consumers(found, workers.alive(db, workers_within))
    for queue, first_due in oldest.items():
        found[queue].oldest_waiting_seconds = max((now - first_due).total_seconds(), 0.0)
    if failed:
        for entry in found.values():
            entry.failed = entry.failed or 0
    return [found[name] for name in sorted(found)]


def _consumers(found: dict[str, QueueStats], alive: Iterable[Worker]) -> None:
    for entry in found.values():
        entry.consumers = entry.consumer_threads = 0
    for worker in alive:
        for queue in worker.queues:
            if queue in found:
                served = found[queue]
                served.consumers = (served.consumers or 0) + 1
                served.consumer_threads = (served.consumer_threads or 0) + worker.threads


def unpublished(db: sessionmaker[Session], *, timeout_seconds: float | None = None) -> int:
    """Waiting jobs whose message the broker has not confirmed yet (the outbox), but those of
    paused queues: they wait unpublished on purpose, until the queue is resumed."""
    with db() as session:
        _limit(session, timeout_seconds)
        n = session.scalar(
            select(func.count()).where(
                jobs_t.c.status.in_(OUTBOX),
                jobs_t.c.published_at.is_(None),
                ~is_paused(jobs_t.c.queue),
            )
        )
    return int(n or 0)


def _limit(session: Session, timeout_seconds: float | None) -> None:
    """Bound the statements of this transaction (PostgreSQL; SQLite has its busy timeout)."""
    if timeout_seconds is not None and session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_seconds * 1000)}"))
