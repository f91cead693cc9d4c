"""The worker registry: each worker process records itself (pool, host, pid, threads, jobs in
hand) with its heartbeat every few seconds, and removes itself when it stops cleanly; a
process not heard from for the worker timeout is dead, listed nowhere, and its row pruned.

The CLI (`conveyor workers`), the web process's metrics and the dashboard read it here.

Every time here is the database's clock (PostgreSQL's `now()`), which all hosts share: a host
whose clock is off writes, prunes and reads the same times as the others. SQLite (`conveyor
dev`) is embedded, so its clock is this host's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Interval, delete, func, insert, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.models.base import UTCDateTime, utcnow
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


def _now(session: Session) -> ColumnElement[dt.datetime]:
    """The database's current time (of the transaction, on PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.now(type_=UTCDateTime())
    return literal(utcnow(), UTCDateTime())  # SQLite: in this process, on this host


def _since(session: Session, age: dt.timedelta) -> ColumnElement[dt.datetime]:
    """The database's time `age` ago."""
    if session.get_bind().dialect.name == "postgresql":
        return func.now(type_=UTCDateTime()) - literal(age, Interval())
    return literal(utcnow() - age, UTCDateTime())


def beat(
    db: sessionmaker[Session],
    worker: WorkerProcess,
    jobs_in_hand: int,
    *,
    prune_after: dt.timedelta | None = None,
) -> None:
    """Record that `worker` is alive now (its row is created on its first beat); with
    `prune_after`, delete the rows of the processes silent for longer (dead ones)."""
    with transaction(db) as session:
        now = _now(session)
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
        if prune_after is not None:
            session.execute(
                delete(workers_t).where(
                    workers_t.c.last_heartbeat_at < _since(session, prune_after)
                )
            )


def remove(db: sessionmaker[Session], worker_id: str) -> None:
    """Delete the row of a worker process that stops cleanly."""
    with transaction(db) as session:
        session.execute(delete(workers_t).where(workers_t.c.id == worker_id))


def alive(db: sessionmaker[Session], timeout: dt.timedelta) -> list[Worker]:
    """The worker processes heard from within `timeout`, by pool, host and pid."""
    with db() as session:
        return list(
            session.scalars(
                select(Worker)
                .where(Worker.last_heartbeat_at >= _since(session, timeout))
                .order_by(Worker.pool, Worker.host, Worker.pid)
            )
        )


def alive_by_pool(db: sessionmaker[Session], timeout: dt.timedelta) -> dict[str, int]:
    """How many worker processes of each pool were heard from within `timeout`."""
    with db() as session:
        rows = session.execute(
            select(Worker.pool, func.count())
            .where(Worker.last_heartbeat_at >= _since(session, timeout))
            .group_by(Worker.pool)
        )
        return {pool: int(n) for pool, n in rows}
