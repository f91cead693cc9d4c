"""`outbox.republish_lost` on SQLite, with a recording broker that plays one that lost its data
(a Redis broker restarted without them, or emptied)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import Job
from conveyor.models.base import utcnow
from conveyor.services import outbox, runs
from tests.unit.support import MakeJob, RecordingEnqueuer

LEASE = dt.timedelta(seconds=30)
ERROR = {"type": "RuntimeError", "message": "boom"}


def published(set_job: Callable[..., None], job: Job, seconds_ago: float = 5) -> None:
    set_job(job.id, published_at=utcnow() - dt.timedelta(seconds=seconds_ago))


def test_waiting_jobs_whose_messages_the_broker_lost_are_published_again_once(
    make_job: MakeJob,
    set_job: Callable[..., None],
    load: Callable[..., Job],
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept, lost = make_job(), make_job()
    other_queue = make_job(job_type="system.sleep", queue="reports")
    for job in (kept, lost, other_queue):
        published(set_job, job)
    enqueuer.restart, enqueuer.held = "run-2", {"system": {kept.id}}
    before = utcnow()
    with caplog.at_level(logging.INFO, logger="conveyor.services.outbox"):
        assert outbox.republish_lost(db, enqueuer) == 2
    assert sorted(m.job_id for m in enqueuer.messages) == sorted([lost.id, other_queue.id])
    assert {m.queue for m in enqueuer.messages} == {"system", "reports"}
    stamped = load(lost.id).published_at
    assert stamped is not None and stamped >= before
    assert enqueuer.restart is None  # handled
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "lost the messages of 2 waiting job(s)" in warning.getMessage()

    assert outbox.republish_lost(db, enqueuer) == 0  # nothing new: nothing asked, sent
    assert len(enqueuer.messages) == 2


def test_without_a_restart_the_broker_is_not_read(
    make_job: MakeJob, set_job: Callable[..., None], db: sessionmaker[Session]
) -> None:
    class Unread(RecordingEnqueuer):
        def held_jobs(self, queue: str) -> set[object]:  # type: ignore[override]
            raise AssertionError("read the broker's messages without a restart")

    enqueuer = Unread()
    published(set_job, make_job())
    assert outbox.republish_lost(db, enqueuer) == 0
    assert enqueuer.messages == []


def test_a_lost_retry_is_published_with_the_delay_left_until_its_next_attempt(
    make_job: MakeJob,
    set_job: Callable[..., None],
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="w", lease=LEASE) is not None
    next_at = utcnow() + dt.timedelta(seconds=30)
    assert runs.retry_later(db, job.id, 1, error=ERROR, next_attempt_at=next_at)
    published(set_job, job)
    enqueuer.restart = "run-2"
    assert outbox.republish_lost(db, enqueuer) == 1
    [message] = enqueuer.messages
    assert message.job_id == job.id
    assert 25_000 < message.delay_ms <= 30_000


def test_running_unpublished_and_later_published_jobs_are_left_alone(
    make_job: MakeJob,
    set_job: Callable[..., None],
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
) -> None:
    running = make_job()
    published(set_job, running)
    assert runs.claim(db, running.id, worker="w", lease=LEASE) is not None
    make_job()  # not published yet: the outbox sweep's
    later = make_job()
    published(set_job, later, seconds_ago=-60)  # published after the restart was noticed
    enqueuer.restart = "run-2"
    assert outbox.republish_lost(db, enqueuer) == 0
    assert enqueuer.messages == []
    assert enqueuer.restart is None


def test_many_lost_jobs_are_published_in_batches(
    make_job: MakeJob,
    set_job: Callable[..., None],
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
) -> None:
    jobs = [make_job() for _ in range(7)]
    for job in jobs:
        published(set_job, job)
    enqueuer.restart, enqueuer.held = "run-2", {"system": {jobs[3].id}}
    assert outbox.republish_lost(db, enqueuer, limit=2) == 6
    assert sorted(m.job_id for m in enqueuer.messages) == sorted(
        job.id for i, job in enumerate(jobs) if i != 3
    )


def test_a_broker_failure_leaves_the_restart_to_the_next_pass(
    make_job: MakeJob,
    set_job: Callable[..., None],
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
) -> None:
    job = make_job()
    published(set_job, job)
    enqueuer.restart, enqueuer.fail = "run-2", True
    with pytest.raises(ConnectionError):
        outbox.republish_lost(db, enqueuer)
    assert enqueuer.restart == "run-2"  # not handled
    enqueuer.fail = False
    assert outbox.republish_lost(db, enqueuer) == 1
    assert [m.job_id for m in enqueuer.messages] == [job.id]
