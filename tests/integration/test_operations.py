"""Retention, retry, bulk cancel/retry and queue purge, as services on real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

import conveyor.actors.all  # noqa: F401  (system.* job types)
from conveyor.db import transaction
from conveyor.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from conveyor.models import AuditEvent, Job, JobEvent, JobStatus, Role, User
from conveyor.models.base import utcnow
from conveyor.models.job import events_t, jobs_t
from conveyor.registry import JOBS
from conveyor.services import operations, retention, submissions
from conveyor.services.jobs import new_event
from conveyor.services.operations import JobFilter
from conveyor.services.outcomes import Attempt
from conveyor.services.submissions import NewJob
from conveyor.services.users import create_user
from tests.unit.support import RecordingAnnouncer, RecordingEnqueuer

pytestmark = pytest.mark.integration

DAY = dt.timedelta(days=1)


@pytest.fixture
def users(pg_db: sessionmaker[Session]) -> tuple[User, User, User]:
    return (
        create_user(pg_db, "admin@example.com", Role.ADMIN),
        create_user(pg_db, "member@example.com"),
        create_user(pg_db, "other@example.com"),
    )


@pytest.fixture
def make(pg_db: sessionmaker[Session], users: tuple[User, User, User]) -> Callable[..., Job]:
    """A job of `member` (system.fail, three retries), then put in the given state."""

    def make_(
        status: JobStatus = JobStatus.QUEUED,
        *,
        owner: User | None = None,
        job_type: str = "system.fail",
        queue: str = "system",
        **values: Any,
    ) -> Job:
        new = NewJob(
            job_type=job_type,
            queue=queue,
            payload={},
            max_retries=3,
            owner_id=(owner or users[1]).id,
        )
        job, _ = submissions.write(pg_db, new)
        with transaction(pg_db) as session:
            session.execute(
                update(jobs_t).where(jobs_t.c.id == job.id).values(status=status.value, **values)
            )
        with pg_db() as session:
            found = session.get(Job, job.id)
            assert found is not None
            return found

    return make_


def row(db: sessionmaker[Session], job_id: uuid.UUID) -> Job | None:
    with db() as session:
        return session.get(Job, job_id)


def messages(db: sessionmaker[Session], job_id: uuid.UUID) -> list[str | None]:
    with db() as session:
        return list(
            session.scalars(
                select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        )


# --- retention ----------------------------------------------------------------------------


def test_retention_deletes_old_finished_jobs_and_their_events_only(
    pg_db: sessionmaker[Session], make: Callable[..., Job]
) -> None:
    now = utcnow()
    old = [
        make(status, finished_at=now - 31 * DAY)
        for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
    ]
    recent = make(JobStatus.SUCCEEDED, finished_at=now - 29 * DAY)
    waiting = make(JobStatus.QUEUED, created_at=now - 90 * DAY)
    running = make(JobStatus.RUNNING, started_at=now - 90 * DAY)
    with transaction(pg_db) as session:
        session.execute(
            insert(events_t),
            [new_event(j.id, JobStatus.SUCCEEDED, 1, now - 31 * DAY) for j in old],
        )

    assert retention.purge_expired(pg_db, 30, batch=2) == 3

    assert [row(pg_db, j.id) for j in old] == [None, None, None]
    for kept in (recent, waiting, running):
        assert row(pg_db, kept.id) is not None
    with pg_db() as session:
        gone = select(func.count()).where(JobEvent.job_id.in_([j.id for j in old]))
        assert session.scalar(gone) == 0


def test_retention_of_zero_days_keeps_everything(
    pg_db: sessionmaker[Session], make: Callable[..., Job]
) -> None:
    job = make(JobStatus.SUCCEEDED, finished_at=utcnow() - 3650 * DAY)
    assert retention.purge_expired(pg_db, 0) == 0
    assert row(pg_db, job.id) is not None


def test_a_child_outlives_its_deleted_parent(
    pg_db: sessionmaker[Session], make: Callable[..., Job]
) -> None:
    parent = make(JobStatus.SUCCEEDED, finished_at=utcnow() - 40 * DAY)
    child = make(JobStatus.RUNNING, parent_id=parent.id)
    assert retention.purge_expired(pg_db, 30) == 1
    kept = row(pg_db, child.id)
    assert kept is not None and kept.parent_id is None and kept.status == JobStatus.RUNNING


def test_retention_uses_its_partial_index(pg_db: sessionmaker[Session]) -> None:
    query = retention.expired_query(utcnow(), 500)
    with pg_db() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        compiled = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        plan = "\n".join(session.scalars(text(f"EXPLAIN {compiled}")))
    assert "ix_jobs_finished_finished_at" in plan


def test_only_one_process_deletes_at_a_time(
    pg_db: sessionmaker[Session], make: Callable[..., Job]
) -> None:
    make(JobStatus.SUCCEEDED, finished_at=utcnow() - 40 * DAY)
    with transaction(pg_db) as session:  # another process holds the retention lock
        assert session.scalar(select(func.pg_try_advisory_xact_lock(retention.LOCK_ID)))
        assert retention.delete_batch(pg_db, utcnow()) == 0
    assert retention.delete_batch(pg_db, utcnow()) == 1


# --- retry --------------------------------------------------------------------------------


def test_a_retry_is_a_new_attempt_cycle_of_the_same_job(
    pg_db: sessionmaker[Session], make: Callable[..., Job], users: tuple[User, ...]
) -> None:
    admin, member, _ = users
    error = {"type": "RuntimeError", "message": "boom"}
    failed = make(JobStatus.FAILED, attempts=5, worker_losses=1, finished_at=utcnow(), error=error)
    enqueuer, announcer = RecordingEnqueuer(), RecordingAnnouncer()

    job = operations.retry(pg_db, enqueuer, announcer, JOBS, failed.id, member)

    assert job.id == failed.id and job.status == JobStatus.QUEUED
    assert job.attempts == 5 and job.worker_losses == 0
    assert job.max_retries == 5 + 3  # failures so far, then system.fail's three retries again
    assert job.error == error  # kept until the next outcome
    assert job.finished_at is None and not job.cancel_requested
    published = row(pg_db, job.id)
    assert published is not None and published.published_at is not None  # through the outbox
    assert [m.job_id for m in enqueuer.messages] == [job.id]
    assert messages(pg_db, job.id)[-1] == "retried by member@example.com (was failed)"
    with pytest.raises(ConflictError, match="the job is queued"):  # once is enough
        operations.retry(pg_db, enqueuer, announcer, JOBS, failed.id, admin)


def test_a_retried_job_has_exactly_its_types_retries_again_after_handbacks(
    pg_db: sessionmaker[Session], make: Callable[..., Job], users: tuple[User, ...]
) -> None:
    """Attempts handed back by stopping workers are no failures, before or after a retry:
    the new cycle allows system.fail's three retries (four failures), not one more per
    handback."""
    failed = make(JobStatus.FAILED, attempts=7, worker_losses=1, handbacks=2, finished_at=utcnow())
    job = operations.retry(
        pg_db, RecordingEnqueuer(), RecordingAnnouncer(), JOBS, failed.id, users[1]
    )
    assert (job.attempts, job.worker_losses, job.handbacks) == (7, 0, 2)

    def attempt(number: int) -> Attempt:
        return Attempt(
            number=number,
            worker_losses=job.worker_losses,
            max_retries=job.max_retries,
            max_worker_losses=3,
            handbacks=job.handbacks,
        )

    assert [attempt(7 + n).may_retry for n in range(1, 6)] == [True, True, True, False, False]


def test_only_failed_or_cancelled_jobs_are_retried(
    pg_db: sessionmaker[Session], make: Callable[..., Job], users: tuple[User, ...]
) -> None:
    _, member, other = users
    done = make(JobStatus.SUCCEEDED)
    with pytest.raises(ConflictError, match="succeeded"):
        operations.retry(pg_db, RecordingEnqueuer(), RecordingAnnouncer(), JOBS, done.id, member)
    cancelled = make(JobStatus.CANCELLED, cancel_requested=True)
    with pytest.raises(NotFoundError):
        operations.retry(
            pg_db, RecordingEnqueuer(), RecordingAnnouncer(), JOBS, cancelled.id, other
        )


# --- bulk ---------------------------------------------------------------------------------


def test_bulk_cancel_by_filter_in_batches(
    pg_db: sessionmaker[Session],
    make: Callable[..., Job],
    users: tuple[User, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin, member, other = users
    monkeypatch.setattr(operations, "BATCH", 2)
    mine = [make(JobStatus.QUEUED) for _ in range(3)]
    running = make(JobStatus.RUNNING, attempts=1)
    theirs = make(JobStatus.QUEUED, owner=other)
    finished = make(JobStatus.SUCCEEDED)
    announcer = RecordingAnnouncer()
    where = JobFilter(owner_id=member.id)

    first = operations.bulk_cancel(pg_db, announcer, admin, where, limit=3)
    rest = operations.bulk_cancel(pg_db, announcer, admin, where, limit=3)

    assert (first.count, first.more, rest.count, rest.more) == (3, True, 1, False)
    assert first.stopping + rest.stopping == 1
    assert {row(pg_db, j.id).status for j in mine} == {JobStatus.CANCELLED}  # type: ignore[union-attr]
    stopping = row(pg_db, running.id)
    assert stopping is not None and stopping.status == JobStatus.RUNNING
    assert stopping.cancel_requested
    assert row(pg_db, theirs.id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    assert row(pg_db, finished.id).status == JobStatus.SUCCEEDED  # type: ignore[union-attr]
    assert messages(pg_db, mine[0].id)[-1] == "bulk cancel by admin@example.com"
    with pg_db() as session:
        audited = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == "jobs_cancelled")
                .order_by(AuditEvent.id)
            )
        )
    assert [(e.actor_id, e.details["cancelled"], e.details["more"]) for e in audited] == [
        (admin.id, 3, True),
        (admin.id, 0, False),
    ]
    assert audited[1].details["stopping"] == 1


def test_bulk_operations_are_for_admins_with_a_filter(
    pg_db: sessionmaker[Session], users: tuple[User, ...]
) -> None:
    admin, member, _ = users
    with pytest.raises(PermissionDeniedError):
        operations.bulk_cancel(pg_db, RecordingAnnouncer(), member, JobFilter(queues=("x",)))
    with pytest.raises(InvalidRequestError, match="at least one filter"):
        operations.bulk_cancel(pg_db, RecordingAnnouncer(), admin, JobFilter())
    with pytest.raises(InvalidRequestError) as bad:
        operations.bulk_retry(
            pg_db,
            RecordingEnqueuer(),
            RecordingAnnouncer(),
            JOBS,
            admin,
            JobFilter(statuses=("succeeded",)),
        )
    assert bad.value.errors[0]["field"] == "status"


def test_bulk_retry_retries_matching_failed_jobs_and_skips_unknown_types(
    pg_db: sessionmaker[Session], make: Callable[..., Job], users: tuple[User, ...]
) -> None:
    admin = users[0]
    now = utcnow()
    old = make(JobStatus.FAILED, attempts=4, created_at=now - 2 * DAY)
    new = make(JobStatus.FAILED, attempts=4)
    cancelled = make(JobStatus.CANCELLED, cancel_requested=True)
    unknown = make(JobStatus.FAILED, job_type="gone.away")
    enqueuer = RecordingEnqueuer()

    result = operations.bulk_retry(
        pg_db,
        enqueuer,
        RecordingAnnouncer(),
        JOBS,
        admin,
        JobFilter(statuses=("failed",), created_after=now - DAY),
    )

    assert (result.count, result.skipped, result.more) == (1, 1, False)
    with pg_db() as session:
        [audited] = session.scalars(select(AuditEvent).where(AuditEvent.action == "jobs_retried"))
    assert audited.actor_id == admin.id
    assert (audited.details["retried"], audited.details["skipped"]) == (1, 1)
    assert row(pg_db, new.id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    assert row(pg_db, old.id).status == JobStatus.FAILED  # type: ignore[union-attr]
    assert row(pg_db, cancelled.id).status == JobStatus.CANCELLED  # type: ignore[union-attr]
    assert row(pg_db, unknown.id).status == JobStatus.FAILED  # type: ignore[union-attr]
    assert [m.job_id for m in enqueuer.messages] == [new.id]


def test_purge_cancels_every_waiting_job_of_the_queue(
    pg_db: sessionmaker[Session],
    make: Callable[..., Job],
    users: tuple[User, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(operations, "BATCH", 2)
    waiting = [
        make(status, queue="reports")
        for status in (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.SCHEDULED, JobStatus.QUEUED)
    ]
    running = make(JobStatus.RUNNING, queue="reports", attempts=1)
    elsewhere = make(JobStatus.QUEUED, queue="system")

    result = operations.purge_queue(pg_db, RecordingAnnouncer(), users[0], "reports")

    assert (result.count, result.more) == (4, False)
    for job in waiting:
        purged = row(pg_db, job.id)
        assert purged is not None and purged.status == JobStatus.CANCELLED
        assert purged.finished_at is not None
    assert row(pg_db, running.id).status == JobStatus.RUNNING  # type: ignore[union-attr]
    assert not row(pg_db, running.id).cancel_requested  # type: ignore[union-attr]
    assert row(pg_db, elsewhere.id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    assert messages(pg_db, waiting[0].id)[-1] == "purge of queue reports by admin@example.com"
    with pg_db() as session:
        [audited] = session.scalars(select(AuditEvent).where(AuditEvent.action == "queue_purged"))
    assert audited.actor_id == users[0].id
    assert audited.details == {
        "queue": "reports",
        "cancelled": 4,
        "more": False,
        "by": "admin@example.com",
    }


def test_a_purge_cancels_up_to_its_limit_and_says_whether_more_are_left(
    pg_db: sessionmaker[Session], make: Callable[..., Job], users: tuple[User, ...]
) -> None:
    """One call does a bounded amount of work (an HTTP request must not outlive a proxy's
    timeout): the caller calls again while `more` is true."""
    waiting = [make(JobStatus.QUEUED, queue="reports") for _ in range(3)]
    announcer = RecordingAnnouncer()

    first = operations.purge_queue(pg_db, announcer, users[0], "reports", limit=2)
    assert (first.count, first.more) == (2, True)
    second = operations.purge_queue(pg_db, announcer, users[0], "reports", limit=2)
    assert (second.count, second.more) == (1, False)
    assert {row(pg_db, job.id).status for job in waiting} == {JobStatus.CANCELLED}  # type: ignore[union-attr]
    with pytest.raises(InvalidRequestError, match="limit"):
        operations.purge_queue(pg_db, announcer, users[0], "reports", limit=0)
