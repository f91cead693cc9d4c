"""Deliveries outside the deliver function: ended when their job ends without them, reopened
by a retry of the job, re-checked at send time (opt-outs, bounces), and the bounce list."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import conveyor.actors.notifications  # noqa: F401  (declares notifications.deliver)
from conveyor.background.sweeper import Sweeper
from conveyor.db import transaction
from conveyor.errors import NotFoundError, PermanentDeliveryError
from conveyor.ids import uuid7
from conveyor.models import Delivery, DeliveryStatus, Job, JobStatus, Notification, User
from conveyor.models.base import utcnow
from conveyor.models.notification import deliveries_t
from conveyor.notifications.templates import Templates
from conveyor.notifications.unsubscribe import OptOut
from conveyor.registry import JOBS
from conveyor.services import jobs, notifications, operations, subscriptions
from conveyor.services.cursors import Cursors
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer

TEMPLATES = Templates(max_bytes=65536)


def _job(make_job: MakeJob) -> Job:
    return make_job(job_type=notifications.DELIVER, queue="notifications", payload={})


def _delivery(
    db: sessionmaker[Session],
    owner: User,
    job: Job | None,
    *,
    kind: str = "welcome",
    status: DeliveryStatus = DeliveryStatus.PENDING,
    address: str = "ada@example.com",
    user_id: uuid.UUID | None = None,
    digest_id: uuid.UUID | None = None,
    context: dict[str, Any] | None = None,
) -> uuid.UUID:
    now = utcnow()
    with transaction(db) as session:
        notification = Notification(
            id=uuid7(),
            kind=kind,
            owner_id=owner.id,
            context=context or {},
            created_at=now,
            sensitive=TEMPLATES.kind(kind).sensitive,
        )
        session.add(notification)
        session.flush()
        delivery = Delivery(
            id=uuid7(),
            notification_id=notification.id,
            user_id=user_id,
            channel="email",
            address=address,
            status=status.value,
            attempts=0,
            claimed_attempt=0,
            job_id=job.id if job is not None else None,
            digest_id=digest_id,
            created_at=now,
            updated_at=now,
        )
        session.add(delivery)
        return delivery.id


def _read(db: sessionmaker[Session], delivery_id: uuid.UUID) -> Delivery:
    with db() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        return delivery


def test_a_delivery_whose_job_is_cancelled_while_queued_fails_saying_so(
    db: sessionmaker[Session],
    member: User,
    make_job: MakeJob,
    announcer: RecordingAnnouncer,
) -> None:
    job = _job(make_job)
    delivery_id = _delivery(db, member, job)
    carried = _delivery(db, member, None, digest_id=delivery_id)
    assert notifications.reconcile(db) == 0  # its job waits: nothing to do
    jobs.cancel(db, announcer, job.id, member)

    assert notifications.reconcile(db) == 1
    delivery = _read(db, delivery_id)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_error is not None and "cancelled" in delivery.last_error
    assert _read(db, carried).status == DeliveryStatus.FAILED  # the digest shares its fate
    assert notifications.reconcile(db) == 0


@pytest.mark.parametrize("status", [DeliveryStatus.PENDING, DeliveryStatus.SENDING])
def test_a_delivery_whose_job_failed_without_it_fails(
    db: sessionmaker[Session],
    member: User,
    make_job: MakeJob,
    set_job: Callable[..., None],
    status: DeliveryStatus,
) -> None:
    """The lease reconciler fails a job whose workers were lost: the function never ran to
    record anything."""
    job = _job(make_job)
    delivery_id = _delivery(db, member, job, status=status)
    set_job(job.id, status=JobStatus.FAILED.value, finished_at=utcnow())
    assert notifications.reconcile(db) == 1
    delivery = _read(db, delivery_id)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_error is not None and "workers were lost" in delivery.last_error


def test_running_jobs_and_finished_deliveries_are_left_alone(
    db: sessionmaker[Session],
    member: User,
    make_job: MakeJob,
    set_job: Callable[..., None],
) -> None:
    running = _job(make_job)
    sending = _delivery(db, member, running, status=DeliveryStatus.SENDING)
    set_job(running.id, status=JobStatus.RUNNING.value)
    done = _job(make_job)
    sent = _delivery(db, member, done, status=DeliveryStatus.SENT)
    set_job(done.id, status=JobStatus.CANCELLED.value, finished_at=utcnow())
    assert notifications.reconcile(db) == 0
    assert _read(db, sending).status == DeliveryStatus.SENDING
    assert _read(db, sent).status == DeliveryStatus.SENT


def test_a_delivery_whose_job_was_deleted_fails(db: sessionmaker[Session], member: User) -> None:
    orphan = _delivery(db, member, None)
    assert notifications.reconcile(db) == 1
    delivery = _read(db, orphan)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_error is not None and "deleted" in delivery.last_error


def test_reconciling_goes_in_batches(
    db: sessionmaker[Session], member: User, make_job: MakeJob, set_job: Callable[..., None]
) -> None:
    ids = []
    for _ in range(3):
        job = _job(make_job)
        ids.append(_delivery(db, member, job))
        set_job(job.id, status=JobStatus.CANCELLED.value, finished_at=utcnow())
    assert notifications.reconcile(db, limit=2) == 2
    assert notifications.reconcile(db, limit=2) == 1
    assert {_read(db, i).status for i in ids} == {DeliveryStatus.FAILED}


def test_retrying_the_job_of_a_failed_delivery_makes_it_pending_again(
    db: sessionmaker[Session],
    member: User,
    make_job: MakeJob,
    announcer: RecordingAnnouncer,
    enqueuer: RecordingEnqueuer,
) -> None:
    job = _job(make_job)
    delivery_id = _delivery(db, member, job)
    jobs.cancel(db, announcer, job.id, member)
    notifications.reconcile(db)
    assert _read(db, delivery_id).status == DeliveryStatus.FAILED

    operations.retry(db, enqueuer, announcer, JOBS, job.id, member)
    assert _read(db, delivery_id).status == DeliveryStatus.PENDING
    assert notifications.reconcile(db) == 0  # its job is queued again
    claimed = notifications.claim(db, delivery_id, 1)
    assert isinstance(claimed, notifications.Claimed)


def _claimed(
    db: sessionmaker[Session], delivery_id: uuid.UUID, attempt: int = 1
) -> notifications.Claimed:
    claimed = notifications.claim(db, delivery_id, attempt)
    assert isinstance(claimed, notifications.Claimed)
    return claimed


def test_an_opt_out_after_creation_suppresses_the_send_but_not_a_critical_kind(
    db: sessionmaker[Session], member: User, make_job: MakeJob
) -> None:
    welcome = _delivery(db, member, _job(make_job), user_id=member.id, address=member.email)
    reset = _delivery(
        db, member, _job(make_job), kind="password_reset", user_id=member.id, address=member.email
    )
    assert notifications.refusal(db, _claimed(db, welcome), TEMPLATES) is None
    for kind in ("welcome", "password_reset"):
        subscriptions.opt_out(db, OptOut(subscriptions.user_subscriber(member.id), kind, "email"))

    claimed = _claimed(db, welcome, attempt=2)  # a later attempt of the same job
    reason = notifications.refusal(db, claimed, TEMPLATES)
    assert reason == "the recipient opted out before it was sent"
    notifications.record_suppressed(db, welcome, 2, reason)
    delivery = _read(db, welcome)
    assert delivery.status == DeliveryStatus.SUPPRESSED and delivery.last_error == reason
    assert notifications.refusal(db, _claimed(db, reset), TEMPLATES) is None


def test_an_address_opt_out_suppresses_deliveries_to_that_address(
    db: sessionmaker[Session], member: User, make_job: MakeJob
) -> None:
    delivery_id = _delivery(db, member, _job(make_job), address="someone@example.com")
    subscriber = subscriptions.address_subscriber("email", "Someone@Example.com")
    subscriptions.opt_out(db, OptOut(subscriber, "*", "email"))
    assert notifications.refusal(db, _claimed(db, delivery_id), TEMPLATES) is not None


def test_a_bounced_address_is_suppressed_even_for_a_critical_kind_until_cleared(
    db: sessionmaker[Session], member: User, make_job: MakeJob
) -> None:
    first = _delivery(db, member, _job(make_job), address="gone@example.com")
    notifications.record_bounce(db, first, "email", "gone@example.com", "550 no such mailbox")
    notifications.record_bounce(db, first, "email", "gone@example.com", "550 again")  # once
    later = _delivery(db, member, _job(make_job), kind="password_reset", address="gone@example.com")
    reason = notifications.refusal(db, _claimed(db, later), TEMPLATES)
    assert reason == "the address bounced earlier: 550 no such mailbox"

    cursors = Cursors(b"k" * 32)
    page = notifications.list_bounces(db, cursors)
    assert [(b.channel, b.address, b.delivery_id) for b in page.items] == [
        ("email", "gone@example.com", first)
    ]
    assert notifications.list_bounces(db, cursors, address="GONE@example.com").items
    assert not notifications.list_bounces(db, cursors, channels=["sms"]).items
    notifications.clear_bounce(db, page.items[0].id)
    assert not notifications.list_bounces(db, cursors).items
    with pytest.raises(NotFoundError):
        notifications.clear_bounce(db, page.items[0].id)
    with transaction(db) as session:  # a new attempt of the later delivery
        session.execute(
            update(deliveries_t).where(deliveries_t.c.id == later).values(status="pending")
        )
    assert notifications.refusal(db, _claimed(db, later), TEMPLATES) is None


def test_the_bounce_list_pages(db: sessionmaker[Session], member: User, make_job: MakeJob) -> None:
    cursors = Cursors(b"k" * 32)
    for n in range(3):
        notifications.record_bounce(db, None, "email", f"b{n}@example.com", "550")
    first = notifications.list_bounces(db, cursors, limit=2)
    assert [b.address for b in first.items] == ["b2@example.com", "b1@example.com"]
    assert first.next_cursor is not None
    rest = notifications.list_bounces(db, cursors, cursor=first.next_cursor, limit=2)
    assert [b.address for b in rest.items] == ["b0@example.com"] and rest.next_cursor is None


def test_the_frequent_pass_looks_only_at_the_jobs_finished_since(
    db: sessionmaker[Session], member: User, make_job: MakeJob, set_job: Callable[..., None]
) -> None:
    now = utcnow()
    old, recent = _job(make_job), _job(make_job)
    old_delivery, recent_delivery = _delivery(db, member, old), _delivery(db, member, recent)
    set_job(old.id, status=JobStatus.CANCELLED.value, finished_at=now - dt.timedelta(hours=1))
    set_job(recent.id, status=JobStatus.CANCELLED.value, finished_at=now)
    orphan = _delivery(db, member, None)
    since = now - dt.timedelta(minutes=1)
    assert notifications.reconcile(db, finished_since=since) == 1
    assert _read(db, recent_delivery).status == DeliveryStatus.FAILED
    assert _read(db, old_delivery).status == DeliveryStatus.PENDING
    assert _read(db, orphan).status == DeliveryStatus.PENDING
    assert notifications.reconcile(db) == 2  # the thorough pass finds the rest


def test_the_sweeper_reconciles_all_at_start_then_what_finished_since(
    db: sessionmaker[Session],
    member: User,
    make_job: MakeJob,
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    sweeper = Sweeper(
        db,
        enqueuer,
        announcer,
        interval=1.0,
        grace=dt.timedelta(seconds=3),
        requeue_after=dt.timedelta(minutes=15),
        max_worker_losses=2,
        reconcile_interval=0.0,
    )
    long_ago = _job(make_job)
    first = _delivery(db, member, long_ago)
    set_job(long_ago.id, status="cancelled", finished_at=utcnow() - dt.timedelta(days=2))
    sweeper.sweep_once()
    assert _read(db, first).status == DeliveryStatus.FAILED
    job = _job(make_job)
    second = _delivery(db, member, job)
    jobs.cancel(db, announcer, job.id, member)
    sweeper.sweep_once()
    assert _read(db, second).status == DeliveryStatus.FAILED


def test_a_deferred_attempt_keeps_the_delivery_pending_when_its_retries_are_spent(
    db: sessionmaker[Session], member: User, make_job: MakeJob
) -> None:
    job = _job(make_job)
    delivery_id = _delivery(db, member, job)
    with transaction(db) as session:  # its last retry running: a failure now would be final
        session.execute(
            update(Job).where(Job.id == job.id).values(attempts=11, max_retries=10, handbacks=0)
        )
    claimed = notifications.claim(db, delivery_id, 11)
    assert isinstance(claimed, notifications.Claimed)
    limited = "the smtp provider is at its rate limit"
    final = notifications.record_failure(
        db, delivery_id, job.id, 11, limited, permanent=False, deferred=True
    )
    assert not final and _read(db, delivery_id).status == DeliveryStatus.PENDING
    assert notifications.claim(db, delivery_id, 11) is not None
    assert notifications.record_failure(db, delivery_id, job.id, 11, "500", permanent=False)
    assert _read(db, delivery_id).status == DeliveryStatus.FAILED


def _notification(db: sessionmaker[Session], delivery_id: uuid.UUID) -> Notification:
    with db() as session:
        notification = session.get(Notification, _read(db, delivery_id).notification_id)
        assert notification is not None
        return notification


RESET = {"reset_url": "https://example.com/reset?token=secret", "expires_minutes": 30}


def test_a_sensitive_context_is_erased_when_its_delivery_fails_for_good_not_before(
    db: sessionmaker[Session], member: User, make_job: MakeJob
) -> None:
    job = _job(make_job)
    delivery_id = _delivery(db, member, job, kind="password_reset", context=RESET)
    assert notifications.shown_context(_notification(db, delivery_id)) == {"redacted": True}
    _claimed(db, delivery_id, 1)
    assert not notifications.record_failure(db, delivery_id, job.id, 1, "4xx", permanent=False)
    assert _notification(db, delivery_id).context == RESET  # its retry still needs it

    _claimed(db, delivery_id, 2)
    assert notifications.record_failure(db, delivery_id, job.id, 2, "550", permanent=True)
    erased = _notification(db, delivery_id)
    assert erased.context == {} and erased.context_erased_at is not None

    claimed = _claimed(db, delivery_id, 3)  # an admin retries its job: it cannot render
    with pytest.raises(PermanentDeliveryError, match="erased"):
        notifications.outgoing(claimed, TEMPLATES, None)


def test_a_sensitive_context_is_erased_when_its_job_ends_without_it(
    db: sessionmaker[Session],
    member: User,
    make_job: MakeJob,
    announcer: RecordingAnnouncer,
) -> None:
    job = _job(make_job)
    reset = _delivery(db, member, job, kind="password_reset", context=RESET)
    welcome = _delivery(db, member, job, context={"name": "Ada"})
    jobs.cancel(db, announcer, job.id, member)
    assert notifications.reconcile(db) == 2
    assert _notification(db, reset).context == {}
    assert _notification(db, welcome).context == {"name": "Ada"}  # not a sensitive kind
