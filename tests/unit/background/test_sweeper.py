"""The sweeper's pass: confirmed publishes, expired leases, the outbox; errors survive."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy.orm import Session, sessionmaker

from conveyor.background.sweeper import Sweeper
from conveyor.models import Job, JobStatus
from conveyor.models.base import utcnow
from conveyor.services import outbox, runs
from tests.stack import wait_until
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer


class ConfirmingEnqueuer(RecordingEnqueuer):
    """Also reports `publish_soon` confirmations, as the broker enqueuer does."""

    def __init__(self) -> None:
        super().__init__()
        self.confirmed: list[uuid.UUID] = []

    def take_confirmed(self) -> list[uuid.UUID]:
        confirmed, self.confirmed = self.confirmed, []
        return confirmed


def _sweeper(
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
    interval: float = 60.0,
) -> Sweeper:
    return Sweeper(
        db,
        enqueuer,
        announcer,
        interval=interval,
        grace=dt.timedelta(0),
        requeue_after=dt.timedelta(minutes=15),
        max_worker_losses=2,
    )


def test_a_sweep_publishes_the_outbox_and_requeues_expired_jobs(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    waiting = make_job()
    lost = make_job()
    assert runs.claim(db, lost.id, worker="w", lease=dt.timedelta(seconds=30)) is not None
    set_job(lost.id, lease_expires_at=utcnow() - dt.timedelta(seconds=1))
    _sweeper(db, enqueuer, announcer).sweep_once()
    assert sorted(m.job_id for m in enqueuer.messages) == sorted([waiting.id, lost.id])
    assert load(waiting.id).published_at is not None
    assert load(lost.id).status == JobStatus.RETRYING
    assert announcer.announced == [(lost.id, "retrying")]


def test_a_sweep_marks_confirmed_publishes(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    announcer: RecordingAnnouncer,
) -> None:
    job = make_job()
    enqueuer = ConfirmingEnqueuer()
    enqueuer.confirmed.append(job.id)
    sweeper = _sweeper(db, enqueuer, announcer)
    outbox.flush_confirmed(db, enqueuer)
    assert load(job.id).published_at is not None
    sweeper.sweep_once()
    assert enqueuer.messages == []  # already published: nothing for the outbox


def test_a_sweep_survives_a_broker_outage(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = make_job()
    enqueuer.fail = True
    sweeper = _sweeper(db, enqueuer, announcer)
    sweeper.sweep_once()
    assert "sweep failed" in caplog.text
    assert load(job.id).published_at is None
    enqueuer.fail = False
    sweeper.sweep_once()
    assert [m.job_id for m in enqueuer.messages] == [job.id]


def test_the_sweeper_thread_sweeps_until_stopped(
    make_job: MakeJob,
    db: sessionmaker[Session],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    job = make_job()
    sweeper = _sweeper(db, enqueuer, announcer, interval=0.02)
    sweeper.start()
    try:
        wait_until(lambda: load(job.id).published_at is not None, timeout=5)
    finally:
        sweeper.stop()
    assert not sweeper.is_alive()
    assert [m.job_id for m in enqueuer.messages] == [job.id]


def test_after_a_database_outage_leases_are_expired_only_once_heartbeats_had_time(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The database was down longer than the lease: the lease ran out because no heartbeat
    # could renew it, not because its worker died.
    job = make_job()
    assert runs.claim(db, job.id, worker="w", lease=dt.timedelta(seconds=30)) is not None
    set_job(job.id, lease_expires_at=utcnow() - dt.timedelta(seconds=1))
    sweeper = _sweeper(db, enqueuer, announcer)
    sweeper.lease_hold = 0.5
    flush = outbox.flush_confirmed

    def unreachable(*args: object, **kwargs: object) -> None:
        refused = psycopg.OperationalError("connection refused")
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, refused)

    monkeypatch.setattr(outbox, "flush_confirmed", unreachable)
    sweeper.sweep_once()
    monkeypatch.setattr(outbox, "flush_confirmed", flush)

    sweeper.sweep_once()  # the database is back; the heartbeat has not renewed yet
    assert load(job.id).status == JobStatus.RUNNING
    wait_until(lambda: sweeper.sweep_once() or load(job.id).status == JobStatus.RETRYING, 5)
    assert load(job.id).worker_losses == 1  # no heartbeat came: its worker is lost after all


def test_a_sweep_deletes_the_jobs_past_their_retention_once_per_interval(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    old, recent = make_job(), make_job()
    long_ago = utcnow() - dt.timedelta(days=31)
    set_job(old.id, status=JobStatus.SUCCEEDED.value, finished_at=long_ago)
    set_job(recent.id, status=JobStatus.FAILED.value, finished_at=utcnow())
    sweeper = Sweeper(
        db,
        enqueuer,
        announcer,
        interval=60.0,
        grace=dt.timedelta(0),
        requeue_after=dt.timedelta(minutes=15),
        max_worker_losses=2,
        retention_days=30,
        retention_interval=3600,
    )
    sweeper.sweep_once()
    with db() as session:
        assert session.get(Job, old.id) is None
        assert session.get(Job, recent.id) is not None

    again = make_job()
    set_job(again.id, status=JobStatus.CANCELLED.value, finished_at=long_ago)
    sweeper.sweep_once()  # within the interval: not yet
    with db() as session:
        assert session.get(Job, again.id) is not None
