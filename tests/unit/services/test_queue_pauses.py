"""Pausing a queue on SQLite (`conveyor dev`): the claim, the park, the outbox, the resume, the
figures and the audit log."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from conveyor.models import AuditEvent, Job, JobStatus, Role, User
from conveyor.models.base import utcnow
from conveyor.registry import JOBS
from conveyor.services import outbox, queue_pauses, queues, runs, workers
from conveyor.services.jobs import JobMessage
from conveyor.services.workers import WorkerProcess
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer

LEASE = dt.timedelta(seconds=30)
SetJob = Callable[..., None]
Load = Callable[[uuid.UUID], Job]


def actions(db: sessionmaker[Session]) -> list[tuple[str, dict[str, object]]]:
    with db() as session:
        found = session.scalars(select(AuditEvent).order_by(AuditEvent.id))
        return [(e.action, e.details) for e in found]


def test_a_pause_is_recorded_once_and_audited(
    db: sessionmaker[Session], admin: User, member: User
) -> None:
    assert queue_pauses.pause(db, "system", admin, "  maintenance ") is True
    assert queue_pauses.pause(db, "system", admin, "again") is False  # idempotent
    found = queue_pauses.paused(db)
    assert list(found) == ["system"]
    assert (found["system"].paused_by, found["system"].reason) == (admin.id, "maintenance")
    assert actions(db) == [
        ("queue_paused", {"queue": "system", "reason": "maintenance", "by": "admin@example.com"})
    ]
    with pytest.raises(PermissionDeniedError):
        queue_pauses.pause(db, "reports", member)
    with pytest.raises(InvalidRequestError):
        queue_pauses.pause(db, "q" * 101, admin)
    with pytest.raises(PermissionDeniedError):
        queue_pauses.resume(db, RecordingEnqueuer(), "system", member)
    assert list(queue_pauses.paused(db)) == ["system"]


def test_the_command_line_stand_in_is_no_stored_actor(db: sessionmaker[Session]) -> None:
    cli = User(id=uuid.UUID(int=0), email="cli:ops@host", role=Role.ADMIN.value, active=True)
    assert queue_pauses.pause(db, "system", cli)
    assert queue_pauses.paused(db)["system"].paused_by is None
    with db() as session:
        event = session.scalars(select(AuditEvent)).one()
    assert (event.actor_id, event.details["by"]) == (None, "cli:ops@host")


def test_a_job_of_a_paused_queue_is_not_claimed_but_parked(
    db: sessionmaker[Session], make_job: MakeJob, load: Load, admin: User
) -> None:
    job = make_job()
    other = make_job(queue="reports")
    outbox.publish_now(db, RecordingEnqueuer(), [JobMessage(job.id, "system.echo", "system")], "")
    queue_pauses.pause(db, "system", admin)

    assert runs.claim(db, job.id, worker="w", lease=LEASE) is None
    assert load(job.id).published_at is not None
    assert runs.park(db, job.id) is runs.Park.PARKED
    parked = load(job.id)
    assert (parked.status, parked.published_at, parked.attempts) == ("queued", None, 0)
    # The broker's confirmation of its first message, late: it must not hide the parked job.
    with transaction(db) as session:
        outbox.mark_published(session, [job.id], first_only=True)
    assert load(job.id).published_at is None
    # Another queue's job runs; a job that is not waiting is never parked.
    assert runs.claim(db, other.id, worker="w", lease=LEASE) is not None
    assert runs.park(db, other.id) is runs.Park.NOT_WAITING


def test_a_job_whose_queue_is_resumed_before_its_park_is_claimed_again(
    db: sessionmaker[Session], make_job: MakeJob, set_job: SetJob, load: Load, admin: User
) -> None:
    job = make_job()
    outbox.publish_now(db, RecordingEnqueuer(), [JobMessage(job.id, "system.echo", "system")], "")
    queue_pauses.pause(db, "system", admin)
    assert runs.claim(db, job.id, worker="w", lease=LEASE) is None  # the worker's claim
    enqueuer = RecordingEnqueuer()
    assert queue_pauses.resume(db, enqueuer, "system", admin) == 0  # its message is still out
    assert runs.park(db, job.id) is runs.Park.RESUMED  # the worker's park, after the resume
    assert load(job.id).published_at is None  # should the second claim fail: the sweep's
    assert runs.claim(db, job.id, worker="w", lease=LEASE) is not None
    assert load(job.id).published_at is not None
    # A retry not yet due in a queue not paused: an early or stale message, nothing changes.
    later = make_job()
    set_job(later.id, status="retrying", next_attempt_at=utcnow() + dt.timedelta(minutes=5))
    outbox.publish_now(db, enqueuer, [JobMessage(later.id, "system.echo", "system")], "")
    assert runs.park(db, later.id) is runs.Park.NOT_WAITING
    assert load(later.id).published_at is not None


def test_a_parked_retry_keeps_its_due_time_and_is_published_with_it_on_resume(
    db: sessionmaker[Session],
    make_job: MakeJob,
    set_job: SetJob,
    load: Load,
    admin: User,
    enqueuer: RecordingEnqueuer,
) -> None:
    retry_at = utcnow() + dt.timedelta(minutes=5)
    retrying = make_job()
    set_job(retrying.id, status="retrying", next_attempt_at=retry_at, published_at=utcnow())
    queued = make_job()
    queue_pauses.pause(db, "system", admin)
    assert runs.park(db, retrying.id) is runs.Park.PARKED
    assert load(retrying.id).next_attempt_at == retry_at

    assert queue_pauses.resume(db, enqueuer, "system", admin) == 2
    by_id = {m.job_id: m for m in enqueuer.messages}
    assert by_id[queued.id].delay_ms == 0
    assert 4 * 60_000 < by_id[retrying.id].delay_ms <= 5 * 60_000
    assert load(retrying.id).published_at is not None
    assert queue_pauses.paused(db) == {}
    assert [a for a, _ in actions(db)] == ["queue_paused", "queue_resumed"]
    assert queue_pauses.resume(db, enqueuer, "system", admin) == 0  # not paused: nothing
    assert len(actions(db)) == 2


def test_a_resume_the_broker_refuses_leaves_the_jobs_to_the_sweep(
    db: sessionmaker[Session],
    make_job: MakeJob,
    load: Load,
    admin: User,
    enqueuer: RecordingEnqueuer,
) -> None:
    job = make_job()
    queue_pauses.pause(db, "system", admin)
    enqueuer.fail = True
    assert queue_pauses.resume(db, enqueuer, "system", admin) == 0
    assert queue_pauses.paused(db) == {}
    assert load(job.id).published_at is None
    enqueuer.fail = False
    grace = dt.timedelta(0)
    outbox.publish_pending(db, enqueuer, grace=grace, requeue_after=dt.timedelta(minutes=15))
    assert [m.job_id for m in enqueuer.messages] == [job.id]


def test_a_resume_publishes_in_batches_up_to_its_most(
    db: sessionmaker[Session],
    make_job: MakeJob,
    admin: User,
    enqueuer: RecordingEnqueuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queue_pauses, "RESUME_BATCH", 2)
    made = [make_job().id for _ in range(5)]
    queue_pauses.pause(db, "system", admin)
    assert queue_pauses.resume(db, enqueuer, "system", admin) == 5
    assert [m.job_id for m in enqueuer.messages] == made  # oldest first

    monkeypatch.setattr(queue_pauses, "RESUME_MOST", 3)
    more = [make_job().id for _ in range(5)]
    queue_pauses.pause(db, "system", admin)
    assert queue_pauses.resume(db, enqueuer, "system", admin) == 4  # two whole batches
    grace, requeue_after = dt.timedelta(0), dt.timedelta(minutes=15)
    outbox.publish_pending(db, enqueuer, grace=grace, requeue_after=requeue_after)
    assert [m.job_id for m in enqueuer.messages[5:]] == more  # the last by the sweep


def test_a_queue_paused_again_while_resuming_is_not_published_in_a_loop(
    db: sessionmaker[Session],
    make_job: MakeJob,
    admin: User,
    enqueuer: RecordingEnqueuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queue_pauses, "RESUME_BATCH", 2)
    made = [make_job().id for _ in range(5)]
    queue_pauses.pause(db, "system", admin)
    publish = enqueuer.publish

    def paused_again(messages: Sequence[JobMessage]) -> None:
        publish(messages)
        queue_pauses.pause(db, "system", admin)  # nothing is marked published any more

    monkeypatch.setattr(enqueuer, "publish", paused_again)
    assert queue_pauses.resume(db, enqueuer, "system", admin) == 5
    assert [m.job_id for m in enqueuer.messages] == made  # each once


def test_the_outbox_publishes_no_job_of_a_paused_queue(
    db: sessionmaker[Session],
    make_job: MakeJob,
    set_job: SetJob,
    load: Load,
    admin: User,
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    long_ago = utcnow() - dt.timedelta(hours=1)
    waiting = make_job()
    set_job(waiting.id, updated_at=long_ago)
    stale = make_job()
    set_job(stale.id, published_at=long_ago, updated_at=long_ago)
    delayed = make_job()
    set_job(delayed.id, status="scheduled", next_attempt_at=utcnow() - dt.timedelta(seconds=1))
    elsewhere = make_job(queue="reports")
    set_job(elsewhere.id, updated_at=long_ago)
    queue_pauses.pause(db, "system", admin)

    grace, requeue_after = dt.timedelta(seconds=1), dt.timedelta(minutes=15)
    outbox.publish_pending(db, enqueuer, grace=grace, requeue_after=requeue_after)
    assert [m.job_id for m in enqueuer.messages] == [elsewhere.id]
    # A delayed job that comes due is queued, and waits parked.
    assert outbox.promote_due(db, enqueuer, announcer) is False
    promoted = load(delayed.id)
    assert (promoted.status, promoted.published_at) == ("queued", None)
    assert [m.job_id for m in enqueuer.messages] == [elsewhere.id]
    # A broker that lost its messages: those of the paused queue stay for the resume.
    enqueuer.restart = "restarted"
    assert outbox.republish_lost(db, enqueuer) == 1
    assert [m.job_id for m in enqueuer.messages] == [elsewhere.id, elsewhere.id]
    assert queues.unpublished(db) == 0  # parked on purpose: not an outbox backlog

    assert queue_pauses.resume(db, enqueuer, "system", admin) == 2  # the stale one has a message
    assert {m.job_id for m in enqueuer.messages[2:]} == {waiting.id, delayed.id}


def test_queue_figures_say_paused_since_when_and_who_consumes(
    db: sessionmaker[Session], make_job: MakeJob, admin: User
) -> None:
    make_job(queue="reports")
    started = utcnow()
    for pid, served, threads in [(1, ["system"], 8), (2, ["system", "reports"], 2)]:
        worker = WorkerProcess(f"w{pid}", "pool", "host", pid, served, threads, started)
        workers.beat(db, worker, 0)
    queue_pauses.pause(db, "idle", admin)  # a paused queue is listed even if nothing uses it

    found = {q.queue: q for q in queues.stats(db, ["system"], workers_within=LEASE)}
    assert sorted(found) == ["idle", "reports", "system"]
    assert (found["system"].consumers, found["system"].consumer_threads) == (2, 10)
    assert (found["reports"].consumers, found["reports"].consumer_threads) == (1, 2)
    assert (found["idle"].paused, found["idle"].consumers) == (True, 0)
    paused_at = found["idle"].paused_at
    assert paused_at is not None and paused_at >= started
    assert not found["system"].paused and found["system"].paused_at is None
    assert queues.stats(db, ["system"])[-1].consumers is None  # only when asked


def test_only_a_known_queue_may_be_paused(
    db: sessionmaker[Session], make_job: MakeJob, set_job: SetJob, admin: User
) -> None:
    import conveyor.actors.all  # noqa: F401  (the job types, with their queues)

    queue_pauses.check_known(db, JOBS, "system")  # a job type uses it
    set_job(make_job(queue="legacy").id, status=JobStatus.RETRYING.value)
    queue_pauses.check_known(db, JOBS, "legacy")  # it holds jobs
    finished = make_job(queue="gone")
    set_job(finished.id, status=JobStatus.SUCCEEDED.value)
    with pytest.raises(NotFoundError):
        queue_pauses.check_known(db, JOBS, "gone")
    queue_pauses.pause(db, "gone", admin)
    queue_pauses.check_known(db, JOBS, "gone")  # paused: it can be resumed
