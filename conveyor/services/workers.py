"""The worker registry: each worker process records itself (pool, host, pid, threads, jobs in
hand) with its heartbeat every few seconds, and removes itself when it stops cleanly; a
process not heard from for the worker timeout is dead, listed nowhere, and its row pruned.

The CLI (`conveyor workers`), the web process's metrics and the dashboard read it here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.models.base import utcnow
from conveyor.models.worker import Worker, workers_t


@dataclass(frozen=True)
class WorkerProcess:
    """What a worker process says about itself."""

    id: str
    pool: str
    host: str
    pid: int
    queues: Sequence[str]
    threads: int
    started_at: dt.datetime


def beat(
    db: sessionmaker[Session],
    worker: WorkerProcess,
    jobs_in_hand: int,
    *,
    prune_before: dt.datetime | None = None,
) -> None:
    """Record that `worker` is alive now (its row is created on its first beat); with
    `prune_before`, delete the rows of the processes silent since then (dead ones)."""
    now = utcnow()
    with transaction(db) as session:
        found = session.execute(
            update(workers_t)
            .where(workers_t.c.id == worker.id)
            .values(last_heartbeat_at=now, jobs_in_hand=jobs_in_hand)
        )
        if found.rowcount == 0:  # type: ignore[attr-defined]
            session.execute(
                insert(workers_t).values(
                    id=worker.id,
                    pool=worker.pool,
                    host=worker.host,
                    pid=worker.pid,
                    queues=sorted(worker.queues),
                    threads=worker.threads,
                    jobs_in_hand=jobs_in_hand,
                    started_at=worker.started_at,
                    last_heartbeat_at=now,
                )
            )
        if prune_before is not None:
            session.execute(delete(workers_t).where(workers_t.c.last_heartbeat_at < prune_before))


def remove(db: sessionmaker[Session], worker_id: str) -> None:
    """Delete the row of a worker process that stops cleanly."""
    with transaction(db) as session:
        session.execute(delete(workers_t).where(workers_t.c.id == worker_id))


def alive(db: sessionmaker[Session], timeout: dt.timedelta) -> list[Worker]:
    """The worker processes heard from within `timeout`, by pool, host and pid."""
    since = utcnow() - timeout
    with db() as session:
        return list(
            session.scalars(
                select(Worker)
                .where(Worker.last_heartbeat_at >= since)
                .order_by(Worker.pool, Worker.host, Worker.pid)
            )
        )


def alive_by_pool(db: sessionmaker[Session], timeout: dt.timedelta) -> dict[str, int]:
    """How many worker processes of each pool were heard from within `timeout`."""
    since = utcnow() - timeout
    with db() as session:
        rows = session.execute(
            select(Worker.pool, func.count())
            .where(Worker.last_heartbeat_at >= since)
            .group_by(Worker.pool)
        )
        return {pool: int(n) for pool, n in rows}
