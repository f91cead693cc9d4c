"""Queue depths from the job rows: waiting, scheduled, running, failed, the oldest waiting."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import JobStatus, User
from conveyor.models.base import utcnow
from conveyor.services import queues
from tests.unit.support import MakeJob

SetJob = Callable[..., None]


def by_queue(db: sessionmaker[Session], *names: str, failed: bool = False) -> dict[str, Any]:
    return {q.queue: q for q in queues.stats(db, names, failed=failed)}


def test_an_empty_queue_is_listed_with_zeros(db: sessionmaker[Session]) -> None:
    stats = by_queue(db, "system", "reports")
    assert list(stats) == ["reports", "system"]
    assert stats["system"] == queues.QueueStats("system")


def test_queues_count_waiting_scheduled_running_and_failed_jobs(
    make_job: MakeJob, set_job: SetJob, db: sessionmaker[Session], member: User
) -> None:
    now = utcnow()
    waiting = make_job()
    set_job(waiting.id, created_at=now - dt.timedelta(seconds=90))
    make_job()
    retry_due = make_job()
    set_job(retry_due.id, status="retrying", next_attempt_at=now - dt.timedelta(seconds=5))
    retry_later = make_job()
    set_job(retry_later.id, status="retrying", next_attempt_at=now + dt.timedelta(hours=1))
    delayed = make_job()
    set_job(delayed.id, status="scheduled", next_attempt_at=now + dt.timedelta(hours=1))
    set_job(make_job().id, status="running")
    set_job(make_job().id, status="failed")
    set_job(make_job().id, status="succeeded")
    set_job(make_job(queue="reports").id, status="failed")

    stats = by_queue(db, "system", failed=True)
    system = stats["system"]
    assert (system.waiting, system.scheduled, system.running, system.failed) == (3, 2, 1, 1)
    assert 89 <= system.oldest_waiting_seconds < 120
    assert stats["reports"].failed == 1  # a queue that holds jobs is listed unasked
    assert by_queue(db, "system")["system"].failed is None  # only when asked


def test_a_delayed_job_waits_from_its_run_at_and_a_retry_from_its_retry_time(
    make_job: MakeJob, set_job: SetJob, db: sessionmaker[Session]
) -> None:
    now = utcnow()
    promoted = make_job()
    set_job(
        promoted.id,
        created_at=now - dt.timedelta(hours=1),
        run_at=now - dt.timedelta(seconds=30),
    )
    assert 29 <= by_queue(db, "system")["system"].oldest_waiting_seconds < 60
    retry = make_job()
    set_job(
        retry.id,
        status=JobStatus.RETRYING.value,
        created_at=now - dt.timedelta(hours=2),
        next_attempt_at=now - dt.timedelta(seconds=45),
    )
    assert 44 <= by_queue(db, "system")["system"].oldest_waiting_seconds < 60


def test_unpublished_counts_waiting_jobs_without_a_confirmed_message(
    make_job: MakeJob, set_job: SetJob, db: sessionmaker[Session]
) -> None:
    make_job()
    set_job(make_job().id, published_at=utcnow())
    set_job(make_job().id, status="succeeded")
    assert queues.unpublished(db) == 1
