"""The overview's figures: jobs finished per minute by outcome over the last hour, the failure
rate, the queues, and the live workers. Read from the database (the row is the truth), so
they are the same on RabbitMQ and Redis, and in `conveyor dev`.

The series reads only the jobs finished in the window, through the partial index of finished
jobs by `finished_at` (`ix_jobs_finished_finished_at`), and its statement is bounded: a page
gets its answer, or an error, in `timeout_seconds`. Nothing is cached here; the page decides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Integer, cast, extract, func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import bound
from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.models.job import FINISHED_ORDER, jobs_t
from conveyor.models.worker import Worker
from conveyor.services import queues, workers
from conveyor.services.queues import QueueStats

#: Longest the overview's statements may take (each, on PostgreSQL).
TIMEOUT_SECONDS = 5.0
MINUTE = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Minute:
    """The jobs that reached a final status in the minute starting at `at`."""

    at: dt.datetime
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True)
class Overview:
    """What the overview page shows."""

    series: list[Minute]
    failure_rate: float | None  #: failed / finished over the series; None when none finished
    queues: list[QueueStats]
    workers: list[Worker]  #: the live worker processes, by pool, host and pid

    @property
    def oldest_waiting(self) -> dict[str, float]:
        """Seconds the oldest waiting job of each queue has been due (0: none waits)."""
        return {q.queue: q.oldest_waiting_seconds for q in self.queues}

    @property
    def workers_by_pool(self) -> dict[str, int]:
        """Live worker processes per pool, by pool name."""
        found: dict[str, int] = {}
        for worker in self.workers:
            found[worker.pool] = found.get(worker.pool, 0) + 1
        return dict(sorted(found.items()))

    @property
    def waiting(self) -> int:
        return sum(q.waiting for q in self.queues)

    @property
    def running(self) -> int:
        return sum(q.running for q in self.queues)


def _epoch_minute(session: Session) -> ColumnElement[int]:
    """The minute `finished_at` falls in, as minutes since the epoch (UTC)."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(extract("epoch", jobs_t.c.finished_at) / 60), Integer)
    # SQLite stores the UTC time as text; strftime reads it as UTC.
    return cast(cast(func.strftime("%s", jobs_t.c.finished_at), Integer) / 60, Integer)


def _minute_of(moment: dt.datetime) -> int:
    return int(moment.timestamp() // 60)


def throughput(
    db: sessionmaker[Session],
    *,
    minutes: int = 60,
    now: dt.datetime | None = None,
    timeout_seconds: float | None = TIMEOUT_SECONDS,
) -> list[Minute]:
    """Jobs finished per minute by outcome over the last `minutes` minutes (the current one
    last, whole or not), oldest first; every minute is present, with zeros when nothing
    finished in it."""
    if minutes < 1:
        raise ValueError("minutes must be at least 1")
    last = _minute_of(now or utcnow())
    first = last - minutes + 1
    start = dt.datetime.fromtimestamp(first * 60, dt.UTC)
    end = start + minutes * MINUTE
    counts: dict[tuple[int, str], int] = {}
    with db() as session:
        bound(session, timeout_seconds)
        minute = _epoch_minute(session).label("minute")
        rows = session.execute(
            select(minute, jobs_t.c.status, func.count())
            .where(
                # Spelled as the partial index's predicate, so the index serves the range.
                jobs_t.c.status.in_([s.value for s in FINISHED_ORDER]),
                jobs_t.c.finished_at >= start,
                jobs_t.c.finished_at < end,
            )
            .group_by(minute, jobs_t.c.status)
        )
        for at, status, n in rows:
            counts[(int(at), status)] = int(n)
    return [
        Minute(
            at=dt.datetime.fromtimestamp(m * 60, dt.UTC),
            succeeded=counts.get((m, JobStatus.SUCCEEDED.value), 0),
            failed=counts.get((m, JobStatus.FAILED.value), 0),
            cancelled=counts.get((m, JobStatus.CANCELLED.value), 0),
        )
        for m in range(first, last + 1)
    ]


def failure_rate(series: Sequence[Minute]) -> float | None:
    """The share of the jobs finished over `series` that failed; None when none finished
    (a rate of 0 would say all went well)."""
    finished = sum(m.finished for m in series)
    if finished == 0:
        return None
    return sum(m.failed for m in series) / finished


def overview(
    db: sessionmaker[Session],
    *,
    worker_timeout: dt.timedelta,
    queue_names: Iterable[str] = (),
    minutes: int = 60,
    now: dt.datetime | None = None,
    timeout_seconds: float | None = TIMEOUT_SECONDS,
) -> Overview:
    """The overview page's figures: the series of the last `minutes`, its failure rate, every
    queue of `queue_names` and every other queue with unfinished jobs, and the worker
    processes heard from within `worker_timeout`."""
    series = throughput(db, minutes=minutes, now=now, timeout_seconds=timeout_seconds)
    return Overview(
        series=series,
        failure_rate=failure_rate(series),
        queues=queues.stats(db, queue_names, timeout_seconds=timeout_seconds),
        workers=workers.alive(db, worker_timeout),
    )
