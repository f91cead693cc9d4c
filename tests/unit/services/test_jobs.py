"""The API side of the job lifecycle on SQLite: submit, idempotency, read, list, cancel."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from conveyor.errors import BadRequestError, ConflictError, InvalidRequestError, NotFoundError
from conveyor.ids import uuid7
from conveyor.models import Job, JobEvent, JobStatus, User
from conveyor.models.base import utcnow
from conveyor.services import jobs, runs, submissions
from conveyor.services.cursors import Cursors
from conveyor.services.submissions import NewJob, request_hash
from tests.unit.support import MakeJob, RecordingAnnouncer

LEASE = dt.timedelta(seconds=30)
CURSORS = Cursors(b"k" * 32)


def _count(db: sessionmaker[Session], model: type[Any]) -> int:
    with db() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


# --- submit ---------------------------------------------------------------------------------


def test_submit_writes_a_queued_row_and_a_queued_event(
    db: sessionmaker[Session], member: User, load: Callable[..., Job], history: Callable[..., Any]
) -> None:
    job, created = submissions.write(
        db,
        NewJob(
            job_type="system.echo",
            queue="system",
            payload={"hello": "world"},
            max_retries=2,
            owner_id=member.id,
        ),
    )
    assert created is True
    row = load(job.id)
    assert row.status == JobStatus.QUEUED
    assert row.type == "system.echo"
    assert row.queue == "system"
    assert row.payload == {"hello": "world"}
    assert row.attempts == 0
    assert row.max_retries == 2
    assert row.owner_id == member.id
    assert row.cancel_requested is False
    assert row.published_at is None
    assert row.idempotency_key is None and row.request_hash is None
    assert row.created_at == row.updated_at
    assert row.created_at.tzinfo is not None
    assert history(job.id) == [("status", "queued", 0)]


def test_submitted_ids_are_time_ordered(make_job: MakeJob) -> None:
    ids = [make_job().id for _ in range(5)]
    assert ids == sorted(ids)
    assert all(i.version == 7 for i in ids)


def test_the_same_key_and_payload_returns_the_same_job(
    db: sessionmaker[Session], member: User
) -> None:
    def submit() -> tuple[Job, bool]:
        return submissions.write(
            db,
            NewJob(
                job_type="system.echo",
                queue="system",
                payload={"a": 1, "b": [1, 2]},
                max_retries=0,
                owner_id=member.id,
                idempotency_key="order-42",
            ),
        )

    first, created = submit()
    again, created_again = submit()
    assert created is True
    assert created_again is False
    assert again.id == first.id
    assert again.idempotency_key == "order-42"
    assert _count(db, Job) == 1
    assert _count(db, JobEvent) == 1


def test_the_request_hash_ignores_key_order() -> None:
    assert request_hash("system.echo", {"a": 1, "b": 2}) == request_hash(
        "system.echo", {"b": 2, "a": 1}
    )
    assert request_hash("system.echo", {"a": 1}) != request_hash("system.fail", {"a": 1})


def test_the_same_key_with_a_different_payload_is_invalid(
    db: sessionmaker[Session], member: User, make_job: MakeJob
) -> None:
    make_job(payload={"a": 1}, key="order-42")
    with pytest.raises(InvalidRequestError) as caught:
        submissions.write(
            db,
            NewJob(
                job_type="system.echo",
                queue="system",
                payload={"a": 2},
                max_retries=3,
                owner_id=member.id,
                idempotency_key="order-42",
            ),
        )
    assert caught.value.errors == [{"field": "Idempotency-Key", "message": "reused key"}]
    assert _count(db, Job) == 1


def test_the_same_key_with_a_different_type_is_invalid(
    db: sessionmaker[Session], member: User, make_job: MakeJob
) -> None:
    make_job(payload={"a": 1}, key="order-42")
    with pytest.raises(InvalidRequestError):
        submissions.write(
            db,
            NewJob(
                job_type="system.fail",
                queue="system",
                payload={"a": 1},
                max_retries=3,
                owner_id=member.id,
                idempotency_key="order-42",
            ),
        )


def test_idempotency_keys_are_per_owner(
    make_job: MakeJob, db: sessionmaker[Session], other: User
) -> None:
    mine = make_job(payload={"a": 1}, key="order-42")
    theirs, created = submissions.write(
        db,
        NewJob(
            job_type="system.echo",
            queue="system",
            payload={"a": 1},
            max_retries=3,
            owner_id=other.id,
            idempotency_key="order-42",
        ),
    )
    assert created is True
    assert theirs.id != mine.id
    assert theirs.owner_id == other.id


def test_submissions_without_a_key_are_never_deduplicated(make_job: MakeJob) -> None:
    assert make_job(payload={"a": 1}).id != make_job(payload={"a": 1}).id


def test_a_concurrent_submission_with_the_same_key_gets_the_job_or_a_conflict(
    db: sessionmaker[Session], member: User
) -> None:
    engine = db.kw["bind"]
    b_progressed = threading.Event()
    a_committing = threading.Event()
    threads: dict[str, int] = {}
    outcomes: dict[str, Any] = {}

    def before_commit(session: Session) -> None:
        if threading.get_ident() == threads.get("a"):
            a_committing.set()
            b_progressed.wait(timeout=5)

    def before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.get_ident() == threads.get("b") and statement.startswith("INSERT INTO jobs"):
            b_progressed.set()

    def submit(name: str) -> None:
        threads[name] = threading.get_ident()
        try:
            outcomes[name] = submissions.write(
                db,
                NewJob(
                    job_type="system.echo",
                    queue="system",
                    payload={"a": 1},
                    max_retries=0,
                    owner_id=member.id,
                    idempotency_key="same-key",
                ),
            )
        except Exception as exc:
            outcomes[name] = exc
        finally:
            if name == "b":
                b_progressed.set()

    event.listen(db, "before_commit", before_commit)
    event.listen(engine, "before_cursor_execute", before_execute)
    try:
        a = threading.Thread(target=submit, args=("a",))
        a.start()
        assert a_committing.wait(timeout=5)
        b = threading.Thread(target=submit, args=("b",))
        b.start()
        a.join(timeout=10)
        b.join(timeout=40)
    finally:
        event.remove(db, "before_commit", before_commit)
        event.remove(engine, "before_cursor_execute", before_execute)

    first, created = outcomes["a"]
    assert created is True
    second = outcomes["b"]
    if isinstance(second, Exception):
        assert isinstance(second, ConflictError), repr(second)
    else:
        assert second[0].id == first.id
        assert second[1] is False


def test_submit_many_writes_every_job_in_one_go(
    db: sessionmaker[Session], member: User, other: User, history: Callable[..., Any]
) -> None:
    batch = [
        NewJob("system.echo", "system", {"i": i}, 0, owner.id)
        for i, owner in enumerate([member, other, member])
    ]
    written = submissions.write_many(db, batch)
    assert [j.payload for j in written] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [j.owner_id for j in written] == [member.id, other.id, member.id]
    assert [j.id for j in written] == sorted(j.id for j in written)
    assert _count(db, Job) == 3
    for job in written:
        assert history(job.id) == [("status", "queued", 0)]


def test_submit_many_refuses_idempotency_keys(db: sessionmaker[Session], member: User) -> None:
    batch = [NewJob("system.echo", "system", {}, 0, member.id, idempotency_key="k")]
    with pytest.raises(ValueError, match="idempotency key"):
        submissions.write_many(db, batch)
    assert _count(db, Job) == 0


def test_a_failing_submit_many_writes_nothing(db: sessionmaker[Session], member: User) -> None:
    batch = [
        NewJob("system.echo", "system", {}, 0, member.id),
        NewJob("system.echo", "system", {}, 0, uuid7()),  # no such user
    ]
    with pytest.raises(Exception, match="FOREIGN KEY"):
        submissions.write_many(db, batch)
    assert _count(db, Job) == 0


# --- get and list ----------------------------------------------------------------------------


def test_a_member_sees_their_own_job(
    make_job: MakeJob, db: sessionmaker[Session], member: User
) -> None:
    job = make_job()
    assert jobs.get(db, job.id, member).id == job.id


def test_a_member_cannot_see_another_members_job(
    make_job: MakeJob, db: sessionmaker[Session], other: User
) -> None:
    job = make_job()
    with pytest.raises(NotFoundError):
        jobs.get(db, job.id, other)


def test_an_admin_sees_every_job(make_job: MakeJob, db: sessionmaker[Session], admin: User) -> None:
    job = make_job()
    assert jobs.get(db, job.id, admin).id == job.id


def test_an_unknown_job_is_not_found(db: sessionmaker[Session], admin: User) -> None:
    with pytest.raises(NotFoundError):
        jobs.get(db, uuid.uuid4(), admin)


def test_a_member_lists_their_own_jobs_and_an_admin_all(
    make_job: MakeJob, db: sessionmaker[Session], member: User, other: User, admin: User
) -> None:
    mine = [make_job(member).id for _ in range(3)]
    theirs = [make_job(other).id for _ in range(2)]
    assert [j.id for j in jobs.list_jobs(db, member, CURSORS).jobs] == mine[::-1]
    assert [j.id for j in jobs.list_jobs(db, other, CURSORS).jobs] == theirs[::-1]
    assert {j.id for j in jobs.list_jobs(db, admin, CURSORS).jobs} == set(mine + theirs)
    assert jobs.list_jobs(db, admin, CURSORS).next_cursor is None


def test_listing_filters_by_status_and_type(
    make_job: MakeJob, db: sessionmaker[Session], member: User, announcer: RecordingAnnouncer
) -> None:
    echo = make_job()
    fail = make_job(job_type="system.fail", payload={"failures": 1})
    jobs.cancel(db, announcer, echo.id, member)
    assert [j.id for j in jobs.list_jobs(db, member, CURSORS, statuses=["cancelled"]).jobs] == [
        echo.id
    ]
    assert [j.id for j in jobs.list_jobs(db, member, CURSORS, statuses=["queued"]).jobs] == [
        fail.id
    ]
    assert [j.id for j in jobs.list_jobs(db, member, CURSORS, types=["system.fail"]).jobs] == [
        fail.id
    ]
    both = jobs.list_jobs(db, member, CURSORS, statuses=["queued", "cancelled"]).jobs
    assert [j.id for j in both] == [fail.id, echo.id]
    assert jobs.list_jobs(db, member, CURSORS, statuses=["running"]).jobs == []


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 10])
def test_keyset_pagination_walks_every_job_once_newest_first(
    make_job: MakeJob, db: sessionmaker[Session], member: User, limit: int
) -> None:
    created = [make_job().id for _ in range(7)]
    seen: list[uuid.UUID] = []
    cursor = None
    pages = 0
    while True:
        page = jobs.list_jobs(db, member, CURSORS, cursor=cursor, limit=limit)
        pages += 1
        assert 1 <= len(page.jobs) <= limit
        seen.extend(j.id for j in page.jobs)
        if page.next_cursor is None:
            break
        assert len(page.jobs) == limit
        cursor = page.next_cursor
        assert pages < 20
    assert seen == created[::-1]
    assert pages == -(-7 // limit)


def test_pagination_does_not_skip_jobs_created_between_pages(
    make_job: MakeJob, db: sessionmaker[Session], member: User
) -> None:
    older = [make_job().id for _ in range(4)]
    first = jobs.list_jobs(db, member, CURSORS, limit=2)
    newer = make_job().id
    second = jobs.list_jobs(db, member, CURSORS, cursor=first.next_cursor, limit=2)
    assert [j.id for j in first.jobs] == older[:1:-1]
    assert [j.id for j in second.jobs] == older[1::-1]
    assert newer not in [j.id for j in second.jobs]
    assert second.next_cursor is None


def test_a_listing_without_jobs_is_empty(db: sessionmaker[Session], member: User) -> None:
    page = jobs.list_jobs(db, member, CURSORS)
    assert page.jobs == [] and page.next_cursor is None


@pytest.mark.parametrize("cursor", ["not-a-cursor!", "abc", "é", "AAAA" * 10, "A" * 44])
def test_a_bad_cursor_is_a_bad_request(
    db: sessionmaker[Session], member: User, cursor: str
) -> None:
    with pytest.raises(BadRequestError) as caught:
        jobs.list_jobs(db, member, CURSORS, cursor=cursor)
    assert caught.value.status == 400
    assert caught.value.errors[0]["field"] == "cursor"


def test_a_cursor_of_other_filters_is_a_bad_request(
    make_job: MakeJob, db: sessionmaker[Session], member: User
) -> None:
    for _ in range(3):
        make_job()
    cursor = jobs.list_jobs(db, member, CURSORS, types=["system.echo"], limit=1).next_cursor
    assert cursor is not None
    page = jobs.list_jobs(db, member, CURSORS, types=["system.echo"], cursor=cursor, limit=1)
    assert len(page.jobs) == 1
    with pytest.raises(BadRequestError):
        jobs.list_jobs(db, member, CURSORS, cursor=cursor, limit=1)


def test_a_listing_leaves_payload_and_result_unread_unless_included(
    make_job: MakeJob, db: sessionmaker[Session], member: User
) -> None:
    make_job(payload={"big": "x" * 1000})
    [summary] = jobs.list_jobs(db, member, CURSORS).jobs
    with pytest.raises(sa_exc.SQLAlchemyError):  # raiseload: never read lazily
        _ = summary.payload
    [full] = jobs.list_jobs(db, member, CURSORS, include=["payload", "result"]).jobs
    assert full.payload == {"big": "x" * 1000} and full.result is None
    [payload_only] = jobs.list_jobs(db, member, CURSORS, include=["payload"]).jobs
    assert payload_only.payload == {"big": "x" * 1000}
    with pytest.raises(sa_exc.SQLAlchemyError):
        _ = payload_only.result


@pytest.mark.parametrize("include", [(), ("payload",)])
def test_a_page_ends_before_the_first_job_take_refuses(
    make_job: MakeJob, db: sessionmaker[Session], member: User, include: tuple[str, ...]
) -> None:
    created = [make_job().id for _ in range(5)][::-1]
    offered: list[uuid.UUID] = []

    def take(job: Job) -> bool:
        offered.append(job.id)
        return len(offered) <= 2

    page = jobs.list_jobs(db, member, CURSORS, include=include, take=take, limit=4)
    assert [j.id for j in page.jobs] == created[:2]
    assert offered == created[:3]
    assert page.next_cursor is not None
    rest = jobs.list_jobs(db, member, CURSORS, cursor=page.next_cursor, include=include)
    assert [j.id for j in rest.jobs] == created[2:]


def test_a_take_that_refuses_the_first_job_is_a_mistake(
    make_job: MakeJob, db: sessionmaker[Session], member: User
) -> None:
    make_job()
    with pytest.raises(ValueError, match="first job"):
        jobs.list_jobs(db, member, CURSORS, take=lambda job: False)


def test_cancelling_a_queued_job_cancels_it_at_once(
    make_job: MakeJob,
    db: sessionmaker[Session],
    member: User,
    announcer: RecordingAnnouncer,
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    cancelled = jobs.cancel(db, announcer, job.id, member)
    assert cancelled.status == JobStatus.CANCELLED
    row = load(job.id)
    assert row.status == JobStatus.CANCELLED
    assert row.cancel_requested is True
    assert row.finished_at is not None
    assert history(job.id) == [("status", "queued", 0), ("status", "cancelled", 0)]
    assert announcer.announced == [(job.id, "cancelled")]


def test_cancelling_a_retrying_job_cancels_it_at_once(
    make_job: MakeJob,
    db: sessionmaker[Session],
    member: User,
    announcer: RecordingAnnouncer,
) -> None:
    job = make_job()
    claimed = runs.claim(db, job.id, worker="w", lease=LEASE)
    assert claimed is not None
    error = {"type": "RuntimeError", "message": "boom"}
    assert runs.retry_later(db, job.id, 1, error=error, next_attempt_at=utcnow() + LEASE)
    assert jobs.cancel(db, announcer, job.id, member).status == JobStatus.CANCELLED


def test_cancelling_a_running_job_asks_it_to_stop(
    make_job: MakeJob,
    db: sessionmaker[Session],
    member: User,
    announcer: RecordingAnnouncer,
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="w", lease=LEASE) is not None
    answer = jobs.cancel(db, announcer, job.id, member)
    assert answer.status == JobStatus.RUNNING
    row = load(job.id)
    assert row.status == JobStatus.RUNNING
    assert row.cancel_requested is True
    assert row.finished_at is None
    assert history(job.id)[-1] == ("status", "running", 1)
    assert announcer.announced == [(job.id, "running")]


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_cancelling_a_finished_job_is_a_conflict(
    make_job: MakeJob,
    db: sessionmaker[Session],
    member: User,
    announcer: RecordingAnnouncer,
    load: Callable[..., Job],
    status: JobStatus,
) -> None:
    job = make_job()
    assert runs.claim(db, job.id, worker="w", lease=LEASE) is not None
    assert runs.finish(db, job.id, 1, status, error={"type": "X", "message": "x"})
    with pytest.raises(ConflictError, match=status.value):
        jobs.cancel(db, announcer, job.id, member)
    assert load(job.id).status == status
    assert load(job.id).cancel_requested is False
    assert announcer.announced == []


def test_cancelling_a_cancelled_job_changes_nothing(
    make_job: MakeJob,
    db: sessionmaker[Session],
    member: User,
    announcer: RecordingAnnouncer,
    load: Callable[..., Job],
    history: Callable[..., Any],
) -> None:
    job = make_job()
    jobs.cancel(db, announcer, job.id, member)
    finished_at = load(job.id).finished_at
    events = history(job.id)
    again = jobs.cancel(db, announcer, job.id, member)
    assert again.status == JobStatus.CANCELLED
    assert load(job.id).finished_at == finished_at
    assert history(job.id) == events
    assert announcer.announced == [(job.id, "cancelled")]


def test_a_member_cannot_cancel_another_members_job(
    make_job: MakeJob,
    db: sessionmaker[Session],
    other: User,
    announcer: RecordingAnnouncer,
    load: Callable[..., Job],
) -> None:
    job = make_job()
    with pytest.raises(NotFoundError):
        jobs.cancel(db, announcer, job.id, other)
    assert load(job.id).status == JobStatus.QUEUED


def test_an_admin_can_cancel_any_job(
    make_job: MakeJob, db: sessionmaker[Session], admin: User, announcer: RecordingAnnouncer
) -> None:
    job = make_job()
    assert jobs.cancel(db, announcer, job.id, admin).status == JobStatus.CANCELLED


# --- events and counts -----------------------------------------------------------------------


def test_events_after_returns_the_newer_events_oldest_first(
    make_job: MakeJob, db: sessionmaker[Session], member: User, announcer: RecordingAnnouncer
) -> None:
    job = make_job()
    jobs.cancel(db, announcer, job.id, member)
    events = jobs.events_after(db, job.id, 0)
    assert [e.status for e in events] == ["queued", "cancelled"]
    assert [e.status for e in jobs.events_after(db, job.id, events[0].id)] == ["cancelled"]
    assert jobs.events_after(db, job.id, events[-1].id) == []


def test_cancelling_a_waiting_job_tells_on_cancelled_once(
    make_job: MakeJob, db: sessionmaker[Session], member: User, announcer: RecordingAnnouncer
) -> None:
    job = make_job()
    told: list[uuid.UUID] = []
    jobs.cancel(db, announcer, job.id, member, on_cancelled=lambda j: told.append(j.id))
    jobs.cancel(db, announcer, job.id, member, on_cancelled=lambda j: told.append(j.id))
    assert told == [job.id]
