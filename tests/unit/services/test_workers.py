"""The worker registry: beats upsert a process's row, a clean stop removes it, and processes
silent for the timeout are not alive and get pruned; on SQLite and PostgreSQL, whose clock
is the one that counts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import make_engine, make_sessionmaker, transaction
from conveyor.models.base import utcnow
from conveyor.models.worker import workers_t
from conveyor.services import workers
from conveyor.services.workers import WorkerProcess

TIMEOUT = dt.timedelta(seconds=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_db")
        return
    engine = make_engine(sqlite_url, pool_size=5)
    yield make_sessionmaker(engine)
    engine.dispose()


def process(id_: str, pool: str = "system", pid: int = 100) -> WorkerProcess:
    return WorkerProcess(
        id=id_,
        pool=pool,
        host="host-a",
        pid=pid,
        queues=["system"],
        threads=8,
        started_at=utcnow(),
    )


def age(db: sessionmaker[Session], worker_id: str, seconds: float) -> None:
    with transaction(db) as session:
        session.execute(
            update(workers_t)
            .where(workers_t.c.id == worker_id)
            .values(last_heartbeat_at=utcnow() - dt.timedelta(seconds=seconds))
        )


def test_a_beat_records_the_process_and_the_next_updates_it(db: sessionmaker[Session]) -> None:
    workers.beat(db, process("a"), 0)
    first = workers.alive(db, TIMEOUT)[0]
    workers.beat(db, process("a"), 3)
    [row] = workers.alive(db, TIMEOUT)
    assert (row.id, row.pool, row.host, row.pid, row.threads) == ("a", "system", "host-a", 100, 8)
    assert row.queues == ["system"]
    assert row.jobs_in_hand == 3
    assert row.last_heartbeat_at >= first.last_heartbeat_at


def test_a_clean_stop_removes_the_process(db: sessionmaker[Session]) -> None:
    workers.beat(db, process("a"), 0)
    workers.remove(db, "a")
    assert workers.alive(db, TIMEOUT) == []


def test_silent_processes_are_not_alive_and_are_pruned(db: sessionmaker[Session]) -> None:
    workers.beat(db, process("a", pid=1), 0)
    workers.beat(db, process("b", pid=2), 0)
    workers.beat(db, process("c", pool="reports", pid=3), 0)
    age(db, "b", 31)
    assert [w.id for w in workers.alive(db, TIMEOUT)] == ["c", "a"]  # by pool, host, pid
    assert workers.alive_by_pool(db, TIMEOUT) == {"system": 1, "reports": 1}
    workers.beat(db, process("a", pid=1), 0, prune_after=TIMEOUT)
    with db() as session:
        ids = sorted(session.scalars(workers_t.select().with_only_columns(workers_t.c.id)))
    assert ids == ["a", "c"]


@pytest.mark.parametrize("skew", [dt.timedelta(hours=1), -dt.timedelta(hours=1)])
def test_a_host_whose_clock_is_off_neither_prunes_others_nor_looks_dead(
    pg_db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, skew: dt.timedelta
) -> None:
    """Times are the database's: a host an hour ahead (or behind) sees, writes and prunes
    what every other host does."""
    workers.beat(pg_db, process("a", pid=1), 0)
    monkeypatch.setattr(workers, "utcnow", lambda: utcnow() + skew)  # this host's clock
    workers.beat(pg_db, process("b", pid=2), 0, prune_after=TIMEOUT)
    assert [w.id for w in workers.alive(pg_db, TIMEOUT)] == ["a", "b"]
    assert workers.alive_by_pool(pg_db, TIMEOUT) == {"system": 2}
