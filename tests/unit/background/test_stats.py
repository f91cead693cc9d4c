"""The reader of the database-derived metrics: the last reading, none after a failure or when
it is too old (a stuck reader)."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session, sessionmaker

from conveyor.background.stats import READ_TIMEOUT_SECONDS, Reading, StatsReader
from tests.stack import wait_until
from tests.unit.support import MakeJob


def reader(db: sessionmaker[Session]) -> StatsReader:
    return StatsReader(db, ["system"], interval=1.0, worker_timeout=30)


def test_a_reading_has_the_queues_the_outbox_and_the_live_workers(
    db: sessionmaker[Session], make_job: MakeJob
) -> None:
    make_job()
    stats = reader(db)
    reading = stats.read_once()
    assert reading is not None and stats.current() is reading
    [system] = reading.queues
    assert (system.queue, system.waiting) == ("system", 1)
    assert reading.unpublished == 1
    assert reading.workers_alive == {}


def test_a_failed_reading_leaves_none(db: sessionmaker[Session]) -> None:
    stats = reader(db)
    assert stats.read_once() is not None

    def broken() -> Session:
        raise OSError("database unreachable")

    stats.db = broken  # type: ignore[assignment]
    assert stats.read_once() is None
    assert stats.current() is None


def test_a_reading_too_old_is_not_served(db: sessionmaker[Session]) -> None:
    stats = reader(db)
    stats._reading = Reading(time.monotonic() - 2 * 1.0 - READ_TIMEOUT_SECONDS - 1, [], 0)
    assert stats.current() is None


def test_the_reader_thread_reads_until_stopped(db: sessionmaker[Session]) -> None:
    stats = StatsReader(db, ["system"], interval=0.05, worker_timeout=30)
    stats.start()
    try:
        wait_until(stats.current, timeout=5)
    finally:
        stats.stop()
    assert not stats.is_alive()
