"""The outbox sweep and the lease reconciler on SQLite, with a recording broker."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor.ids import uuid7
from conveyor.models import Job, JobStatus, User
from conveyor.models.base import utcnow
from conveyor.services import jobs, outbox, runs
from conveyor.services.jobs import JobMessage
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer

GRACE = dt.timedelta(seconds=3)
REQUEUE_AFTER = dt.timedelta(minutes=15)
LEASE = dt.timedelta(seconds=30)
ERROR = {"type": "RuntimeError", "message": "boom"}


@pytest.fixture
def sweep(db: sessionmaker[Session], enqueuer: RecordingEnqueuer) -> Callable[..., bool]:
    def sweep_(**kwargs: Any) -> bool:
        options = {"grace": GRACE, "requeue_after": REQUEUE_AFTER, **kwargs}
        return outbox.publish_pending(db, enqueuer, **options)

    return sweep_


def expire(
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
    max_worker_losses: int = 2,
) -> int:
    return outbox.expire_leases(db, enqueuer, announcer, max_worker_losses=max_worker_losses)


def _ago(**kwargs: float) -> dt.datetime:
    return utcnow() - dt.timedelta(**kwargs)


# --- publish_pending -------------------------------------------------------------------------


def test_a_job_unpublished_past_the_grace_period_is_published(
    make_job: MakeJob,
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    job = make_job()
    set_job(job.id, updated_at=_ago(seconds=10))
    before = utcnow()
    assert sweep() is False  # not a whole batch: nothing more to do
    assert enqueuer.messages == [JobMessage(job.id, "system.echo", "system", 0)]
    published_at = load(job.id).published_at
    assert published_at is not None and published_at >= before


def test_a_job_within_the_grace_period_is_left_to_its_request(
    make_job: MakeJob,
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    job = make_job()
    assert sweep(grace=dt.timedelta(minutes=1)) is False
    assert enqueuer.messages == []
    assert load(job.id).published_at is None


def test_a_zero_grace_publishes_at_once(
    make_job: MakeJob, enqueuer: RecordingEnqueuer, sweep: Callable[..., bool]
) -> None:
    job = make_job()
    sweep(grace=dt.timedelta(0))
    assert [m.job_id for m in enqueuer.messages] == [job.id]


def test_a_published_job_is_not_published_again(
    make_job: MakeJob,
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    job = make_job()
    set_job(job.id, updated_at=_ago(seconds=10))
    sweep()
    sweep()
    assert [m.job_id for m in enqueuer.messages] == [job.id]


def test_jobs_are_published_oldest_first(
    make_job: MakeJob,
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    created = [make_job().id for _ in range(3)]
    for job_id in created:
        set_job(job_id, updated_at=_ago(seconds=10))
    sweep()
    assert [m.job_id for m in enqueuer.messages] == created


def test_a_retrying_job_is_published_with_a_delay_until_its_next_attempt(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="w", lease=LEASE) is not None
    next_at = utcnow() + dt.timedelta(seconds=30)
    assert runs.retry_later(db, job.id, 1, error=ERROR, next_attempt_at=next_at)
    set_job(job.id, updated_at=_ago(seconds=10))
    sweep()
    [message] = enqueuer.messages
    assert message.job_id == job.id
    assert 25_000 < message.delay_ms <= 30_000


def test_a_retrying_job_already_due_is_published_without_delay(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="w", lease=LEASE) is not None
    assert runs.retry_later(db, job.id, 1, error=ERROR, next_attempt_at=_ago(seconds=5))
    set_job(job.id, updated_at=_ago(seconds=10))
    sweep()
    assert [(m.job_id, m.delay_ms) for m in enqueuer.messages] == [(job.id, 0)]


def test_a_job_published_longer_ago_than_requeue_after_is_published_again(
    make_job: MakeJob,
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    lost, recent = make_job(), make_job()
    set_job(lost.id, updated_at=_ago(minutes=30), published_at=_ago(minutes=20))
    set_job(recent.id, updated_at=_ago(minutes=30), published_at=_ago(minutes=5))
    sweep()
    assert [m.job_id for m in enqueuer.messages] == [lost.id]
    published_at = load(lost.id).published_at
    assert published_at is not None and published_at > _ago(minutes=1)


def test_a_long_waiting_job_in_a_busy_queue_is_not_published_again(
    make_job: MakeJob,
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    # A backlog: the job's message most likely still waits in the queue, so no duplicate;
    # it is looked at again after another requeue_after.
    waiting = make_job()
    set_job(waiting.id, updated_at=_ago(minutes=30), published_at=_ago(minutes=20))
    enqueuer.depth["system"] = 1200
    sweep()
    assert enqueuer.messages == []
    checked_at = load(waiting.id).published_at
    assert checked_at is not None and checked_at > _ago(minutes=1)
    # an empty queue, another requeue_after later: the message was lost; publish again
    set_job(waiting.id, published_at=_ago(minutes=20))
    enqueuer.depth["system"] = 0
    sweep()
    assert [m.job_id for m in enqueuer.messages] == [waiting.id]


def test_a_retrying_job_is_published_again_only_requeue_after_past_its_due_time(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    waiting, lost = make_job(), make_job()
    for job in (waiting, lost):
        assert runs.claim(db, job.id, worker="w", lease=LEASE) is not None
        assert runs.retry_later(db, job.id, 1, error=ERROR, next_attempt_at=_ago(minutes=5))
    set_job(waiting.id, published_at=_ago(minutes=40))  # long delay, due 5 minutes ago
    set_job(lost.id, published_at=_ago(minutes=40), next_attempt_at=_ago(minutes=20))
    sweep()
    assert [m.job_id for m in enqueuer.messages] == [lost.id]


@pytest.mark.parametrize("status", ["running", "succeeded", "failed", "cancelled"])
def test_jobs_that_do_not_wait_are_never_published(
    make_job: MakeJob,
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
    status: str,
) -> None:
    job = make_job()
    set_job(job.id, status=status, updated_at=_ago(hours=1), published_at=None)
    sweep()
    assert enqueuer.messages == []


def test_a_whole_batch_says_there_may_be_more(
    make_job: MakeJob,
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    created = [make_job().id for _ in range(3)]
    for job_id in created:
        set_job(job_id, updated_at=_ago(seconds=10))
    assert sweep(limit=2) is True
    assert len(enqueuer.messages) == 2
    assert sweep(limit=2) is False
    assert [m.job_id for m in enqueuer.messages] == created
    assert sweep(limit=2) is False
    assert len(enqueuer.messages) == 3


def test_a_broker_failure_leaves_the_jobs_unpublished(
    make_job: MakeJob,
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    sweep: Callable[..., bool],
) -> None:
    job = make_job()
    set_job(job.id, updated_at=_ago(seconds=10))
    enqueuer.fail = True
    with pytest.raises(ConnectionError):
        sweep()
    assert load(job.id).published_at is None
    enqueuer.fail = False
    sweep()
    assert [m.job_id for m in enqueuer.messages] == [job.id]
    assert load(job.id).published_at is not None


def test_mark_published_only_touches_waiting_jobs(
    make_job: MakeJob,
    db: sessionmaker[Session],
    member: User,
    announcer: RecordingAnnouncer,
    load: Callable[..., Job],
) -> None:
    waiting, cancelled = make_job(), make_job()
    jobs.cancel(db, announcer, cancelled.id, member)
    with outbox.transaction(db) as session:
        outbox.mark_published(session, [waiting.id, cancelled.id])
        outbox.mark_published(session, [])
    assert load(waiting.id).published_at is not None
    assert load(cancelled.id).published_at is None


def test_a_due_message_carries_the_delay_left_until_the_next_attempt() -> None:
    now = utcnow()
    job_id = uuid7()
    later = now + dt.timedelta(seconds=2.5)
    assert JobMessage.due_at(job_id, "a.b", "q", later, now).delay_ms == 2500
    assert JobMessage.due_at(job_id, "a.b", "q", now - dt.timedelta(1), now).delay_ms == 0
    assert JobMessage.due_at(job_id, "a.b", "q", None, now) == JobMessage(job_id, "a.b", "q")


# --- expire_leases ---------------------------------------------------------------------------


def _running(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    *,
    max_retries: int = 3,
    expired: bool = True,
) -> Job:
    job = make_job(max_retries=max_retries)
    assert runs.claim(db, job.id, worker="w", lease=LEASE) is not None
    if expired:
        set_job(job.id, lease_expires_at=_ago(seconds=1))
    return job


def test_an_expired_job_with_worker_losses_left_is_requeued(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    history: Callable[..., Any],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = _running(make_job, db, set_job, max_retries=0)
    assert expire(db, enqueuer, announcer) == 1
    row = load(job.id)
    assert row.status == JobStatus.RETRYING
    assert row.error is not None and row.error["type"] == "WorkerLost"
    assert row.lease_expires_at is None
    assert row.next_attempt_at is not None and row.next_attempt_at <= utcnow()
    assert row.published_at is not None
    assert (row.attempts, row.worker_losses) == (1, 1)
    assert enqueuer.messages == [JobMessage(job.id, "system.echo", "system", 0)]
    assert announcer.announced == [(job.id, "retrying")]
    assert history(job.id)[-1] == ("status", "retrying", 1)
    # a lost worker does not use up the job's retries (it has none)
    again = runs.claim(db, job.id, worker="w2", lease=LEASE)
    assert again is not None and again.attempts == 2


def test_an_expired_job_out_of_worker_losses_fails_with_worker_lost(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    history: Callable[..., Any],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = _running(make_job, db, set_job, max_retries=5)
    for _ in range(2):  # two losses are tolerated...
        assert expire(db, enqueuer, announcer, max_worker_losses=2) == 1
        assert runs.claim(db, job.id, worker="w", lease=LEASE) is not None
        set_job(job.id, lease_expires_at=_ago(seconds=1))
    enqueuer.messages.clear()
    announcer.announced.clear()
    assert expire(db, enqueuer, announcer, max_worker_losses=2) == 1  # ...the third is not
    row = load(job.id)
    assert row.status == JobStatus.FAILED
    assert row.error is not None
    assert row.error["type"] == "WorkerLost"
    assert "attempt 3" in row.error["message"]
    assert "3 workers lost" in row.error["message"]
    assert (row.attempts, row.worker_losses) == (3, 3)
    assert row.finished_at is not None
    assert row.lease_expires_at is None
    assert enqueuer.messages == []
    assert announcer.announced == [(job.id, "failed")]
    assert history(job.id)[-1] == ("status", "failed", 3)


def test_with_no_worker_losses_allowed_the_first_loss_fails_the_job(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = _running(make_job, db, set_job, max_retries=3)
    assert expire(db, enqueuer, announcer, max_worker_losses=0) == 1
    assert load(job.id).status == JobStatus.FAILED
    assert enqueuer.messages == []


def test_an_expired_job_whose_cancel_was_requested_is_cancelled(
    make_job: MakeJob,
    db: sessionmaker[Session],
    member: User,
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = _running(make_job, db, set_job, expired=False)
    jobs.cancel(db, RecordingAnnouncer(), job.id, member)
    set_job(job.id, lease_expires_at=_ago(seconds=1))
    assert expire(db, enqueuer, announcer) == 1
    row = load(job.id)
    assert row.status == JobStatus.CANCELLED
    assert row.finished_at is not None
    assert enqueuer.messages == []
    assert announcer.announced == [(job.id, "cancelled")]


def test_a_job_with_a_live_lease_is_left_running(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = _running(make_job, db, set_job, expired=False)
    assert expire(db, enqueuer, announcer) == 0
    assert load(job.id).status == JobStatus.RUNNING
    assert enqueuer.messages == [] and announcer.announced == []


def test_expire_leases_handles_several_jobs_at_once(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    retried = _running(make_job, db, set_job)
    failed = _running(make_job, db, set_job)
    set_job(failed.id, worker_losses=2)
    alive = _running(make_job, db, set_job, expired=False)
    assert expire(db, enqueuer, announcer, max_worker_losses=2) == 2
    assert load(retried.id).status == JobStatus.RETRYING
    assert load(failed.id).status == JobStatus.FAILED
    assert load(alive.id).status == JobStatus.RUNNING
    assert sorted(announcer.announced) == sorted([(retried.id, "retrying"), (failed.id, "failed")])


def test_a_requeue_the_broker_refuses_is_left_to_the_outbox_sweep(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
    sweep: Callable[..., bool],
) -> None:
    job = _running(make_job, db, set_job)
    enqueuer.fail = True
    assert expire(db, enqueuer, announcer) == 1
    row = load(job.id)
    assert row.status == JobStatus.RETRYING
    assert row.published_at is None
    enqueuer.fail = False
    sweep(grace=dt.timedelta(0))
    assert [m.job_id for m in enqueuer.messages] == [job.id]


def test_a_stale_attempt_cannot_finish_a_job_the_reconciler_requeued(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = _running(make_job, db, set_job)
    expire(db, enqueuer, announcer)
    assert not runs.finish(db, job.id, 1, JobStatus.SUCCEEDED, result="late")
    assert load(job.id).status == JobStatus.RETRYING


# --- requeue_unfinished ----------------------------------------------------------------------


def test_requeue_unfinished_unpublishes_waiting_jobs_and_frees_running_ones(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    waiting = make_job()
    set_job(waiting.id, published_at=utcnow())
    running = _running(make_job, db, set_job, expired=False)
    outbox.requeue_unfinished(db)
    assert load(waiting.id).published_at is None
    lease = load(running.id).lease_expires_at
    assert lease is not None and lease < utcnow()
    assert expire(db, enqueuer, announcer) == 1
    assert load(running.id).status == JobStatus.RETRYING
