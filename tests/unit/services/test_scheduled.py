"""Scheduled jobs in the outbox on SQLite: when the next one is due, and their promotion to
the queue once due."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import Job, JobStatus, User
from conveyor.models.base import utcnow
from conveyor.services import jobs, outbox, runs
from conveyor.services.jobs import JobMessage
from conveyor.services.submissions import NewJob, write
from tests.unit.support import RecordingAnnouncer, RecordingEnqueuer

GRACE = dt.timedelta(0)
REQUEUE_AFTER = dt.timedelta(minutes=15)


@pytest.fixture
def schedule(db: sessionmaker[Session], member: User) -> Callable[..., Job]:
    """Write a scheduled `system.echo` due `in_seconds` from now (negative: overdue)."""

    def schedule_(in_seconds: float, **payload: Any) -> Job:
        when = utcnow() + dt.timedelta(seconds=in_seconds)
        new = NewJob(
            job_type="system.echo",
            queue="system",
            payload=payload or {"n": 1},
            max_retries=0,
            owner_id=member.id,
            run_at=when,
            status=JobStatus.SCHEDULED,
        )
        job, created = write(db, new)
        assert created and job.status == JobStatus.SCHEDULED
        return job

    return schedule_


def promote(
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
    limit: int = 500,
) -> bool:
    return outbox.promote_due(db, enqueuer, announcer, limit=limit)


# --- next_due -------------------------------------------------------------------------------


def test_next_due_is_none_without_scheduled_jobs(
    db: sessionmaker[Session], make_job: Callable[..., Job]
) -> None:
    make_job()  # a queued job has no due time
    assert outbox.next_due(db) is None


def test_next_due_is_the_earliest_scheduled_time_in_utc(
    db: sessionmaker[Session], schedule: Callable[..., Job]
) -> None:
    schedule(300)
    soonest = schedule(60)
    schedule(120)
    due = outbox.next_due(db)
    assert due is not None and due.utcoffset() == dt.timedelta(0)
    assert due == soonest.next_attempt_at == soonest.run_at


def test_next_due_ignores_cancelled_and_retrying_jobs(
    db: sessionmaker[Session],
    schedule: Callable[..., Job],
    make_job: Callable[..., Job],
    set_job: Callable[..., None],
    member: User,
) -> None:
    cancelled = schedule(10)
    jobs.cancel(db, RecordingAnnouncer(), cancelled.id, member)
    retrying = make_job()
    set_job(retrying.id, status="retrying", next_attempt_at=utcnow() + dt.timedelta(seconds=5))
    assert outbox.next_due(db) is None
    later = schedule(30)
    assert outbox.next_due(db) == later.next_attempt_at


# --- promote_due ----------------------------------------------------------------------------


def test_a_due_job_is_queued_published_and_announced(
    db: sessionmaker[Session],
    schedule: Callable[..., Job],
    load: Callable[..., Job],
    history: Callable[..., Any],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = schedule(-1)
    assert promote(db, enqueuer, announcer) is False  # not a whole batch
    queued = load(job.id)
    assert queued.status == JobStatus.QUEUED
    assert queued.next_attempt_at is None
    assert queued.run_at == job.run_at  # kept: when it was asked to run
    assert queued.published_at is not None
    assert enqueuer.messages == [JobMessage(job.id, "system.echo", "system")]
    assert announcer.announced == [(job.id, "queued")]
    assert history(job.id) == [("status", "scheduled", 0), ("status", "queued", 0)]


def test_a_job_not_yet_due_is_left_scheduled(
    db: sessionmaker[Session],
    schedule: Callable[..., Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = schedule(60)
    assert promote(db, enqueuer, announcer) is False
    assert load(job.id).status == JobStatus.SCHEDULED
    assert enqueuer.messages == [] and announcer.announced == []


def test_only_the_due_jobs_are_promoted_earliest_first(
    db: sessionmaker[Session],
    schedule: Callable[..., Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    later = schedule(-1)
    earlier = schedule(-5)
    future = schedule(60)
    promote(db, enqueuer, announcer)
    assert [m.job_id for m in enqueuer.messages] == [earlier.id, later.id]
    assert load(future.id).status == JobStatus.SCHEDULED


def test_a_cancelled_scheduled_job_is_never_promoted(
    db: sessionmaker[Session],
    schedule: Callable[..., Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
    member: User,
) -> None:
    job = schedule(0.0)
    cancelled = jobs.cancel(db, RecordingAnnouncer(), job.id, member)
    assert cancelled.status == JobStatus.CANCELLED
    promote(db, enqueuer, announcer)
    assert load(job.id).status == JobStatus.CANCELLED
    assert enqueuer.messages == []


def test_a_scheduled_job_cannot_be_claimed_before_it_is_promoted(
    db: sessionmaker[Session], schedule: Callable[..., Job]
) -> None:
    job = schedule(-1)  # due, but still scheduled: a stray message must not run it
    assert runs.claim(db, job.id, worker="w", lease=dt.timedelta(seconds=30)) is None


def test_a_full_batch_says_there_may_be_more(
    db: sessionmaker[Session],
    schedule: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    for n in range(3):
        schedule(-1, n=n)
    assert promote(db, enqueuer, announcer, limit=2) is True
    assert promote(db, enqueuer, announcer, limit=2) is False
    assert len(enqueuer.messages) == 3
    assert len({m.job_id for m in enqueuer.messages}) == 3


def test_a_due_job_the_broker_refuses_stays_queued_for_the_outbox_sweep(
    db: sessionmaker[Session],
    schedule: Callable[..., Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = schedule(-1)
    enqueuer.fail = True
    promote(db, enqueuer, announcer)
    stuck = load(job.id)
    assert (stuck.status, stuck.published_at) == (JobStatus.QUEUED, None)
    assert promote(db, enqueuer, announcer) is False  # not promoted twice
    enqueuer.fail = False
    outbox.publish_pending(db, enqueuer, grace=GRACE, requeue_after=REQUEUE_AFTER)
    [message] = enqueuer.messages
    assert message.job_id == job.id and message.delay_ms == 0
    assert load(job.id).published_at is not None


def test_the_outbox_sweep_never_publishes_a_scheduled_job(
    db: sessionmaker[Session], schedule: Callable[..., Job], enqueuer: RecordingEnqueuer
) -> None:
    schedule(-1)
    schedule(60)
    outbox.publish_pending(db, enqueuer, grace=GRACE, requeue_after=REQUEUE_AFTER)
    assert enqueuer.messages == []


def test_a_promoted_job_runs_as_a_queued_one(
    db: sessionmaker[Session],
    schedule: Callable[..., Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = schedule(-0.5)
    promote(db, enqueuer, announcer)
    claim = runs.claim(db, job.id, worker="w", lease=dt.timedelta(seconds=30))
    assert claim is not None and claim.attempts == 1
    running = load(job.id)
    assert running.started_at is not None and running.run_at is not None
    assert running.started_at >= running.run_at


def test_with_nothing_scheduled_a_promotion_does_nothing(
    db: sessionmaker[Session],
    make_job: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    make_job()
    assert promote(db, enqueuer, announcer) is False
    assert enqueuer.messages == [] and announcer.announced == []
