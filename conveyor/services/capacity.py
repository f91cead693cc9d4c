"""The capacity signal: how many worker processes each pool (a Procfile process type,
`worker-<pool>`) needs now, from what arrives, how long jobs run, and what waits.

Per queue, from the job rows:

- arrival rate λ: jobs created per second over the last 5 minutes (ids are UUIDv7, so the
  jobs made since a time are a primary-key range);
- mean run time s: of the jobs that finished in the last 15 minutes (finished_at -
  started_at, their last attempt); unknown when none did;
- backlog B: the jobs waiting now (queued, or retrying and due).

Per pool, with T threads per process (its live processes', else Dramatiq's default, 8), the
target utilization U (`CONVEYOR_CAPACITY_TARGET_UTILIZATION`, 0.75) and the drain target D
(`CONVEYOR_CAPACITY_DRAIN_SECONDS`, 300):

    busy threads = Σ λ·s / U  +  Σ B·s / D
    desired      = min(max(floor, ceil(busy threads / T)), CONVEYOR_CAPACITY_MAX_WORKERS)

where floor is 1 when a job of the pool arrived, waits or runs, else 0 (a pool with nothing to
do may scale to zero). A paused queue's arrivals and backlog are left out: its workers take
none of its jobs, so more workers would only sit idle (an autoscaler fed this figure would
otherwise scale out as the parked jobs pile up); its running jobs still count. A queue
whose run time is unknown adds no threads; its floor keeps one process, whose runs then give
the next reading a run time. The inputs come back with the figure, so a page can show why.

A pool's queues are those its live processes consume; a queue that no live process consumes
belongs to the pool of its name (queues are named after pools).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Float, cast, extract, func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import bound
from conveyor.ids import first_uuid7_at
from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.models.job import jobs_t
from conveyor.models.worker import Worker
from conveyor.services import queues, workers
from conveyor.services.queues import QueueStats
from conveyor.settings import Settings

#: Over how long the arrival rate and the run time are measured.
ARRIVALS_WINDOW = dt.timedelta(minutes=5)
RUNS_WINDOW = dt.timedelta(minutes=15)
#: Threads per process of a pool with no live process (Dramatiq's default).
DEFAULT_THREADS = 8
#: Longest a reading may take (each statement, on PostgreSQL).
TIMEOUT_SECONDS = 5.0
#: The outcomes whose run times count (a cancel cuts a run short).
RAN = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)


@dataclass(frozen=True)
class Model:
    """The targets of the capacity signal (from the settings)."""

    target_utilization: float = 0.75
    drain_seconds: float = 300.0
    max_workers: int = 20

    @classmethod
    def of(cls, settings: Settings) -> Model:
        return cls(
            settings.capacity_target_utilization,
            settings.capacity_drain_seconds,
            settings.capacity_max_workers,
        )


@dataclass(frozen=True)
class QueueLoad:
    """What one queue asks of its pool."""

    queue: str
    arrival_per_second: float = 0.0
    mean_seconds: float | None = None  #: None: no job of it finished lately
    backlog: int = 0
    running: int = 0
    #: Paused: its arrivals and backlog ask for no worker (shown, but left out of the sums).
    paused: bool = False


@dataclass(frozen=True)
class PoolCapacity:
    """One pool's desired worker processes, and what the figure was computed from."""

    pool: str
    queues: list[str]
    processes: int  #: live processes now
    threads: int  #: per process
    arrival_per_second: float  #: of its queues not paused
    mean_seconds: float | None  #: of its queues' runs, weighted by their arrivals
    backlog: int  #: of its queues not paused
    running: int
    utilization: float | None  #: jobs in hand / threads of the live processes; None: none
    busy_threads: float  #: threads the arrivals and the backlog need
    desired: int
    paused: list[str] = field(default_factory=list)  #: its paused queues


def plan(
    pool: str,
    loads: Sequence[QueueLoad],
    live: Sequence[Worker],
    model: Model,
) -> PoolCapacity:
    """The capacity of `pool`, whose queues carry `loads` and whose live processes are
    `live` (see the module docstring)."""
    threads = max((w.threads for w in live), default=DEFAULT_THREADS)
    paused = sorted(q.queue for q in loads if q.paused)
    taken = [q for q in loads if not q.paused]  # the queues whose waiting jobs workers take
    busy = 0.0
    for load in taken:
        if load.mean_seconds is not None:
            busy += load.arrival_per_second * load.mean_seconds / model.target_utilization
            busy += load.backlog * load.mean_seconds / model.drain_seconds
    active = any(q.running for q in loads) or any(
        q.arrival_per_second > 0 or q.backlog for q in taken
    )
    desired = min(max(1 if active else 0, math.ceil(busy / threads)), model.max_workers)
    arrivals = sum(q.arrival_per_second for q in taken)
    timed = [q for q in taken if q.mean_seconds is not None]
    weights = sum(q.arrival_per_second for q in timed)
    if not timed:
        mean = None
    elif weights > 0:
        mean = sum(q.arrival_per_second * (q.mean_seconds or 0.0) for q in timed) / weights
    else:
        mean = sum(q.mean_seconds or 0.0 for q in timed) / len(timed)
    capacity = sum(w.threads for w in live)
    return PoolCapacity(
        pool=pool,
        queues=sorted(q.queue for q in loads),
        processes=len(live),
        threads=threads,
        arrival_per_second=arrivals,
        mean_seconds=mean,
        backlog=sum(q.backlog for q in taken),
        running=sum(q.running for q in loads),
        utilization=sum(w.jobs_in_hand for w in live) / capacity if capacity else None,
        busy_threads=busy,
        desired=desired,
        paused=paused,
    )


def _run_seconds(session: Session) -> ColumnElement[float]:
    if session.get_bind().dialect.name == "postgresql":
        return cast(extract("epoch", jobs_t.c.finished_at - jobs_t.c.started_at), Float)
    return cast(
        (func.julianday(jobs_t.c.finished_at) - func.julianday(jobs_t.c.started_at)) * 86400.0,
        Float,
    )


def loads(
    db: sessionmaker[Session],
    stats: Iterable[QueueStats],
    *,
    now: dt.datetime | None = None,
    timeout_seconds: float | None = TIMEOUT_SECONDS,
) -> dict[str, QueueLoad]:
    """Each queue's load: those of `stats` (their backlog and running jobs, and whether they
    are paused: a paused queue is always among them), and any other queue that had jobs
    arrive or finish lately."""
    now = now or utcnow()
    stats = list(stats)
    backlog = {q.queue: (q.waiting, q.running) for q in stats}
    paused = {q.queue for q in stats if q.paused}
    with db() as session:
        bound(session, timeout_seconds)
        arrived: dict[str, int] = {
            queue: int(n)
            for queue, n in session.execute(
                select(jobs_t.c.queue, func.count())
                .where(jobs_t.c.id >= first_uuid7_at(now - ARRIVALS_WINDOW))
                .group_by(jobs_t.c.queue)
            )
        }
        seconds = _run_seconds(session)
        ran = {
            queue: float(mean)
            for queue, mean in session.execute(
                select(jobs_t.c.queue, func.avg(seconds))
                .where(
                    # Implies the predicate of the finished jobs' index, which serves the range.
                    jobs_t.c.status.in_(RAN),
                    jobs_t.c.finished_at >= now - RUNS_WINDOW,
                    jobs_t.c.started_at.is_not(None),
                )
                .group_by(jobs_t.c.queue)
            )
            if mean is not None
        }
    names = set(backlog) | set(arrived) | set(ran)
    window = ARRIVALS_WINDOW.total_seconds()
    return {
        name: QueueLoad(
            queue=name,
            arrival_per_second=arrived.get(name, 0) / window,
            mean_seconds=max(ran[name], 0.0) if name in ran else None,
            backlog=backlog.get(name, (0, 0))[0],
            running=backlog.get(name, (0, 0))[1],
            paused=name in paused,
        )
        for name in sorted(names)
    }


def _pools_of(live: Sequence[Worker], queue_names: Iterable[str]) -> dict[str, list[str]]:
    """Each pool's queues: those its live processes consume (a queue two pools consume goes
    to the one of its name, else to the first by name), then each other queue to the pool of
    its name."""
    consumers: dict[str, set[str]] = {}
    for worker in live:
        for queue in worker.queues:
            consumers.setdefault(str(queue), set()).add(worker.pool)
    pools: dict[str, list[str]] = {w.pool: [] for w in live}
    for queue in sorted(set(queue_names) | set(consumers)):
        found = consumers.get(queue, set())
        owner = queue if queue in found or not found else min(found)
        pools.setdefault(owner, []).append(queue)
    return pools


def desired(
    db: sessionmaker[Session],
    settings: Settings,
    *,
    stats: Sequence[QueueStats] | None = None,
    now: dt.datetime | None = None,
    timeout_seconds: float | None = TIMEOUT_SECONDS,
) -> list[PoolCapacity]:
    """Every pool's capacity (with a live process, or with jobs arriving, waiting, running or
    finished lately), by name. `stats`: the queues' figures, if the caller just read them."""
    if stats is None:
        stats = queues.stats(db, timeout_seconds=timeout_seconds)
    found = loads(db, stats, now=now, timeout_seconds=timeout_seconds)
    live = workers.alive(db, dt.timedelta(seconds=settings.worker_timeout_seconds))
    model = Model.of(settings)
    return [
        plan(
            pool,
            [found.get(q, QueueLoad(q)) for q in names],
            [w for w in live if w.pool == pool],
            model,
        )
        for pool, names in sorted(_pools_of(live, found).items())
    ]
