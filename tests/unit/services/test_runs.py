"""Worker-side transitions on SQLite: claim, finish, retry, progress, lease renewal."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.errors import JobCancelledError
from conveyor.ids import uuid7
from conveyor.models import Job, JobStatus, User
from conveyor.models.base import utcnow
from conveyor.services import jobs, outbox, runs
from conveyor.services.jobs import JobMessage
from conveyor.services.outcomes import Outcome
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer

LEASE = dt.timedelta(seconds=30)
ERROR = {"type": "RuntimeError", "message": "boom"}


def _expire(set_job: Callable[..., None], job: Job) -> None:
    set_job(job.id, lease_expires_at=utcnow() - dt.timedelta(seconds=1))


def _lose_worker(db: sessionmaker[Session], set_job: Callable[..., None], job: Job) -> None:
    """The running attempt's worker dies: its lease runs out and the reconciler requeues."""
    _expire(set_job, job)
    lost = outbox.expire_leases(db, RecordingEnqueuer(), RecordingAnnouncer(), max_worker_losses=10)
    assert lost == 1


def _fail(db: sessionmaker[Session], job: Job, attempt: int) -> None:
    """The attempt fails and is due again at once."""
    outcome = runs.retry_later(db, job.id, attempt, error=ERROR, next_attempt_at=utcnow())
    assert outcome == JobStatus.RETRYING


# --- claim -----------------------------------------------------------------------------------


def test_claiming_a_queued_job_runs_its_first_attempt(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    before = utcnow()
    claimed = runs.claim(db, job.id, worker="host:1", lease=LEASE)
    assert claimed is not None
    assert claimed.id == job.id
    assert claimed.attempts == 1
    assert claimed.payload == job.payload
    row = load(job.id)
    assert row.status == JobStatus.RUNNING
    assert row.attempts == 1
    assert row.worker == "host:1"
    assert row.started_at is not None and row.started_at >= before
    assert row.lease_expires_at is not None
    assert before + LEASE <= row.lease_expires_at <= utcnow() + LEASE
    assert row.published_at is not None  # a claimed job certainly had its message
    assert history(job.id) == [("status", "queued", 0), ("status", "running", 1)]


def test_a_job_is_claimed_only_once(make_job: MakeJob, db: sessionmaker[Session]) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.claim(db, job.id, worker="b", lease=LEASE) is None


def test_claiming_an_unknown_job_returns_none(db: sessionmaker[Session]) -> None:
    assert runs.claim(db, uuid7(), worker="a", lease=LEASE) is None


def test_a_cancelled_job_is_not_claimed(
    make_job: MakeJob,
    db: sessionmaker[Session],
    member: User,
    announcer: RecordingAnnouncer,
    load: Callable[..., Job],
) -> None:
    job = make_job()
    jobs.cancel(db, announcer, job.id, member)
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is None
    assert load(job.id).attempts == 0


def test_a_finished_job_is_not_claimed(make_job: MakeJob, db: sessionmaker[Session]) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.finish(db, job.id, 1, JobStatus.SUCCEEDED, result={"ok": True})
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is None


def test_a_retrying_job_is_not_claimed_before_its_next_attempt(
    make_job: MakeJob, db: sessionmaker[Session], load: Callable[..., Job]
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    later = utcnow() + dt.timedelta(minutes=5)
    assert runs.retry_later(db, job.id, 1, error=ERROR, next_attempt_at=later)
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is None
    assert load(job.id).status == JobStatus.RETRYING
    assert load(job.id).attempts == 1


def test_a_retrying_job_is_claimed_once_due(
    make_job: MakeJob, db: sessionmaker[Session], set_job: Callable[..., None]
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.retry_later(
        db, job.id, 1, error=ERROR, next_attempt_at=utcnow() + dt.timedelta(minutes=5)
    )
    set_job(job.id, next_attempt_at=utcnow() - dt.timedelta(seconds=1))
    again = runs.claim(db, job.id, worker="b", lease=LEASE)
    assert again is not None
    assert again.attempts == 2


def test_a_retry_message_slightly_early_is_tolerated(
    make_job: MakeJob, db: sessionmaker[Session]
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    soon = utcnow() + runs.EARLY_TOLERANCE / 2
    assert runs.retry_later(db, job.id, 1, error=ERROR, next_attempt_at=soon)
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None


def test_a_running_job_with_a_live_lease_is_not_claimed(
    make_job: MakeJob, db: sessionmaker[Session], load: Callable[..., Job]
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.claim(db, job.id, worker="b", lease=LEASE) is None
    assert load(job.id).worker == "a"


def test_a_running_job_is_not_claimed_even_once_its_lease_expired(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="dead", lease=LEASE) is not None
    _expire(set_job, job)
    assert runs.claim(db, job.id, worker="alive", lease=LEASE) is None  # the reconciler's job
    assert load(job.id).worker == "dead"


def test_a_job_whose_worker_died_is_claimed_again_with_its_attempts_up(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="dead", lease=LEASE) is not None
    _lose_worker(db, set_job, job)
    again = runs.claim(db, job.id, worker="alive", lease=LEASE)
    assert again is not None
    assert again.attempts == 2
    assert again.worker_losses == 1
    row = load(job.id)
    assert row.worker == "alive"
    assert row.lease_expires_at is not None and row.lease_expires_at > utcnow()
    assert [h[1:] for h in history(job.id)[-3:]] == [
        ("running", 1),
        ("retrying", 1),
        ("running", 2),
    ]


# --- finish ----------------------------------------------------------------------------------


def test_finishing_records_the_result_and_an_event(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.finish(db, job.id, 1, JobStatus.SUCCEEDED, result={"answer": 42})
    row = load(job.id)
    assert row.status == JobStatus.SUCCEEDED
    assert row.result == {"answer": 42}
    assert row.progress == 1.0
    assert row.finished_at is not None
    assert row.lease_expires_at is None
    assert history(job.id)[-1] == ("status", "succeeded", 1)


def test_finishing_as_failed_records_the_error(
    make_job: MakeJob, db: sessionmaker[Session], load: Callable[..., Job]
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.finish(db, job.id, 1, JobStatus.FAILED, error=ERROR)
    row = load(job.id)
    assert row.status == JobStatus.FAILED
    assert row.error == ERROR
    assert row.progress is None


def test_a_stale_attempt_cannot_finish_the_job(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="slow", lease=LEASE) is not None
    _lose_worker(db, set_job, job)  # the slow worker is taken for dead
    assert runs.claim(db, job.id, worker="fast", lease=LEASE) is not None
    events = history(job.id)
    assert not runs.finish(db, job.id, 1, JobStatus.SUCCEEDED, result="late")
    row = load(job.id)
    assert row.status == JobStatus.RUNNING
    assert row.attempts == 2
    assert row.result is None
    assert history(job.id) == events
    assert runs.finish(db, job.id, 2, JobStatus.SUCCEEDED, result="on time")
    assert load(job.id).result == "on time"


def test_a_finished_job_cannot_be_finished_again(
    make_job: MakeJob, db: sessionmaker[Session], load: Callable[..., Job]
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.finish(db, job.id, 1, JobStatus.SUCCEEDED, result=1)
    assert not runs.finish(db, job.id, 1, JobStatus.FAILED, error=ERROR)
    assert load(job.id).status == JobStatus.SUCCEEDED


def test_a_queued_job_cannot_be_finished(make_job: MakeJob, db: sessionmaker[Session]) -> None:
    job = make_job()
    assert not runs.finish(db, job.id, 0, JobStatus.SUCCEEDED)


# --- retry_later -----------------------------------------------------------------------------


def test_retry_later_sets_retrying_and_the_next_attempt_and_clears_published_at(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert load(job.id).published_at is not None
    next_at = utcnow() + dt.timedelta(seconds=42)
    assert runs.retry_later(db, job.id, 1, error=ERROR, next_attempt_at=next_at)
    row = load(job.id)
    assert row.status == JobStatus.RETRYING
    assert row.next_attempt_at == next_at
    assert row.published_at is None
    assert row.lease_expires_at is None
    assert row.error == ERROR
    assert row.finished_at is None
    assert row.attempts == 1
    assert history(job.id)[-1] == ("status", "retrying", 1)


def test_a_failed_attempt_of_a_cancel_requested_job_ends_it_cancelled(
    make_job: MakeJob,
    db: sessionmaker[Session],
    member: User,
    announcer: RecordingAnnouncer,
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    jobs.cancel(db, announcer, job.id, member)  # running: asked to stop
    # the attempt fails before the heartbeat delivers the cancellation
    outcome = runs.retry_later(db, job.id, 1, error=ERROR, next_attempt_at=utcnow())
    assert outcome == JobStatus.CANCELLED
    row = load(job.id)
    assert row.status == JobStatus.CANCELLED
    assert row.finished_at is not None
    assert history(job.id)[-1] == ("status", "cancelled", 1)
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is None


def test_a_stale_attempt_cannot_schedule_a_retry(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="slow", lease=LEASE) is not None
    _lose_worker(db, set_job, job)
    assert runs.claim(db, job.id, worker="fast", lease=LEASE) is not None
    assert runs.retry_later(db, job.id, 1, error=ERROR, next_attempt_at=utcnow()) is None
    assert load(job.id).status == JobStatus.RUNNING


def test_an_interrupted_attempt_is_retried_as_a_worker_loss_not_a_failure(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    status = runs.retry_later(
        db, job.id, 1, error=ERROR, next_attempt_at=utcnow(), interrupted=True
    )
    assert status == JobStatus.RETRYING
    row = load(job.id)
    assert (row.attempts, row.worker_losses) == (1, 1)
    assert history(job.id)[-1] == ("status", "retrying", 1)


def test_a_deferred_attempt_is_retried_as_a_hand_back_not_a_failure(
    make_job: MakeJob, db: sessionmaker[Session], load: Callable[..., Job]
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    status = runs.retry_later(db, job.id, 1, error=ERROR, next_attempt_at=utcnow(), deferred=True)
    assert status == JobStatus.RETRYING
    row = load(job.id)
    assert (row.attempts, row.worker_losses, row.handbacks) == (1, 0, 1)


def test_an_interrupted_attempt_that_ends_the_job_counts_as_a_worker_loss(
    make_job: MakeJob, db: sessionmaker[Session], load: Callable[..., Job]
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.finish(db, job.id, 1, JobStatus.FAILED, error=ERROR, interrupted=True)
    row = load(job.id)
    assert (row.status, row.attempts, row.worker_losses) == (JobStatus.FAILED, 1, 1)


def test_recording_an_interrupted_attempt_adds_a_worker_loss_and_sends_the_retry(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    announcer: RecordingAnnouncer,
    enqueuer: RecordingEnqueuer,
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    outcome = Outcome(
        JobStatus.RETRYING, error=ERROR, retry_in=dt.timedelta(seconds=1), interrupted=True
    )
    message = JobMessage(job.id, job.type, job.queue)
    assert runs.record(db, enqueuer, announcer, message, 1, outcome) == JobStatus.RETRYING
    assert load(job.id).worker_losses == 1
    assert enqueuer.messages == [JobMessage(job.id, job.type, job.queue, 1000)]


# --- progress and leases ---------------------------------------------------------------------


def test_progress_is_stored_with_an_event(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.report_progress(db, job.id, 1, 0.25, "a quarter") is None
    assert load(job.id).progress == 0.25
    assert history(job.id)[-1] == ("progress", "running", 1)


def test_progress_reports_a_cancel_request(
    make_job: MakeJob, db: sessionmaker[Session], member: User, announcer: RecordingAnnouncer
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    jobs.cancel(db, announcer, job.id, member)
    assert runs.report_progress(db, job.id, 1, 0.5, None) is runs.Stop.CANCEL


def test_progress_of_a_stale_attempt_says_stop(
    make_job: MakeJob, db: sessionmaker[Session], set_job: Callable[..., None]
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    _lose_worker(db, set_job, job)
    assert runs.report_progress(db, job.id, 1, 0.5, None) is runs.Stop.LOST  # requeued
    assert runs.claim(db, job.id, worker="b", lease=LEASE) is not None
    assert runs.report_progress(db, job.id, 1, 0.5, None) is runs.Stop.LOST  # attempt 2 has it


def _unreachable(times: int, then: Callable[..., Any]) -> Callable[..., Any]:
    """`report_progress` as it behaves while the database is down for `times` calls."""
    calls = iter(range(times))

    def report(*args: Any) -> Any:
        if next(calls, None) is not None:
            raise OperationalError("UPDATE jobs", {}, Exception("connection refused"))
        return then(*args)

    return report


def test_stored_progress_rides_out_a_database_blip(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    monkeypatch.setattr(runs, "report_progress", _unreachable(2, runs.report_progress))
    waits: list[float] = []
    stop = runs.store_progress(db, job.id, 1, 0.5, "half", within=30, wait=waits.append)
    assert stop is None
    assert waits == [0.1, 0.5]
    assert load(job.id).progress == 0.5


def test_progress_is_dropped_once_the_database_stays_down_for_the_lease(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    monkeypatch.setattr(runs, "report_progress", _unreachable(100, runs.report_progress))
    waits: list[float] = []
    stop = runs.store_progress(db, job.id, 1, 0.5, "half", within=2, wait=waits.append)
    assert stop is None  # the job goes on
    assert waits == [0.1, 0.5, 1.0]  # 1.6 s: within the 2 s lease
    assert f"progress 0.500 of job {job.id} dropped" in caplog.text
    assert load(job.id).progress is None


def test_a_cancel_during_a_progress_retry_stops_the_wait(
    make_job: MakeJob, db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    monkeypatch.setattr(runs, "report_progress", _unreachable(100, runs.report_progress))

    def cancelled(seconds: float) -> None:
        raise JobCancelledError()

    with pytest.raises(JobCancelledError):
        runs.store_progress(db, job.id, 1, 0.5, None, within=30, wait=cancelled)


def test_retries_within_a_lease_add_up_to_no_more_than_the_lease() -> None:
    assert runs.delays_within(0.05) == ()
    assert runs.delays_within(2) == (0.1, 0.5, 1.0)
    assert runs.delays_within(30) == runs.RECORD_RETRY_DELAYS


def test_renew_leases_extends_the_leases_and_returns_the_cancel_requested_jobs(
    make_job: MakeJob,
    db: sessionmaker[Session],
    member: User,
    announcer: RecordingAnnouncer,
    set_job: Callable[..., None],
    load: Callable[..., Job],
) -> None:
    keep, stop = make_job(), make_job()
    for job in (keep, stop):
        assert runs.claim(db, job.id, worker="a", lease=dt.timedelta(seconds=1)) is not None
    jobs.cancel(db, announcer, stop.id, member)
    before = utcnow()
    asked = runs.renew_leases(db, {keep.id: 1, stop.id: 1}, dt.timedelta(minutes=10))
    assert asked == {stop.id: runs.Stop.CANCEL}
    for job in (keep, stop):
        lease = load(job.id).lease_expires_at
        assert lease is not None and lease >= before + dt.timedelta(minutes=9)


def test_renew_leases_returns_jobs_no_longer_held_by_the_attempt(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
) -> None:
    finished, taken = make_job(), make_job()
    for job in (finished, taken):
        assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.finish(db, finished.id, 1, JobStatus.SUCCEEDED)
    _lose_worker(db, set_job, taken)
    assert runs.claim(db, taken.id, worker="b", lease=LEASE) is not None
    assert runs.renew_leases(db, {finished.id: 1, taken.id: 1}, LEASE) == {
        finished.id: runs.Stop.LOST,
        taken.id: runs.Stop.LOST,
    }


def test_renew_leases_says_lost_not_cancel_for_a_cancelled_job_this_attempt_no_longer_holds(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    member: User,
    announcer: RecordingAnnouncer,
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    _lose_worker(db, set_job, job)
    assert runs.claim(db, job.id, worker="b", lease=LEASE) is not None
    jobs.cancel(db, announcer, job.id, member)  # attempt 2 is asked to stop; attempt 1 holds none
    assert runs.renew_leases(db, {job.id: 1}, LEASE) == {job.id: runs.Stop.LOST}
    assert runs.renew_leases(db, {job.id: 2}, LEASE) == {job.id: runs.Stop.CANCEL}


def test_renew_leases_of_nothing_is_nothing(db: sessionmaker[Session]) -> None:
    assert runs.renew_leases(db, {}, LEASE) == {}


def test_renew_leases_leaves_finished_jobs_alone(
    make_job: MakeJob, db: sessionmaker[Session], load: Callable[..., Job]
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="a", lease=LEASE) is not None
    assert runs.finish(db, job.id, 1, JobStatus.SUCCEEDED)
    runs.renew_leases(db, {job.id: 1}, LEASE)
    assert load(job.id).lease_expires_at is None


def test_renew_leases_does_not_extend_the_lease_of_another_attempt(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="hung", lease=LEASE) is not None
    _lose_worker(db, set_job, job)  # attempt 1 hangs; it is taken for dead
    assert runs.claim(db, job.id, worker="died", lease=LEASE) is not None
    _expire(set_job, job)  # attempt 2's worker died
    # the hung worker's heartbeat still renews what it believes is attempt 1
    assert runs.renew_leases(db, {job.id: 1}, LEASE) == {job.id: runs.Stop.LOST}
    lease = load(job.id).lease_expires_at
    assert lease is not None and lease < utcnow()
