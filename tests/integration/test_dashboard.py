"""The overview's figures and the error groups, read on PostgreSQL and on SQLite (`conveyor
dev`): jobs finished per minute, the failure rate, the groups of failures and their pages."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

import conveyor.actors.all  # noqa: F401  (system.* job types)
from conveyor.db import make_engine, make_sessionmaker, transaction
from conveyor.errors import ConflictError, PermissionDeniedError
from conveyor.models import AuditEvent, Job, JobStatus, Role, User
from conveyor.models.base import utcnow
from conveyor.models.job import error_type_of, events_t, jobs_t
from conveyor.registry import JOBS
from conveyor.services import (
    capacity,
    dashboard,
    error_groups,
    queue_pauses,
    runs,
    submissions,
    workers,
)
from conveyor.services.dashboard import Minute
from conveyor.services.jobs import new_event
from conveyor.services.submissions import NewJob
from conveyor.services.users import create_user
from conveyor.settings import Settings
from tests.unit.support import RecordingAnnouncer, RecordingEnqueuer

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 12, 2, 12, 30, 40, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture(params=["postgresql", "sqlite"])
def any_db(
    request: pytest.FixtureRequest, pg_db: sessionmaker[Session], sqlite_url: str
) -> Iterator[sessionmaker[Session]]:
    if request.param == "postgresql":
        yield pg_db
        return
    engine = make_engine(sqlite_url, pool_size=2)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def owner(any_db: sessionmaker[Session]) -> User:
    return create_user(any_db, "owner@example.com", Role.MEMBER)


MakeJob = Callable[..., Job]


@pytest.fixture
def make(any_db: sessionmaker[Session], owner: User) -> MakeJob:
    """A job of `owner`, then put in `status` with the given columns; a failed job gets an
    error of `error_type` (and its `failed` event, with a traceback if given)."""

    def make_(
        status: JobStatus = JobStatus.SUCCEEDED,
        *,
        job_type: str = "system.fail",
        error_type: str | None = "ValueError",
        traceback: str | None = None,
        **values: Any,
    ) -> Job:
        new = NewJob(job_type, "system", {}, max_retries=3, owner_id=owner.id)
        job, _ = submissions.write(any_db, new)
        if status == JobStatus.FAILED:
            error = {"type": error_type, "message": f"{error_type} in {job_type}"}
            values = {"error": error, "error_type": error_type_of(error), **values}
        with transaction(any_db) as session:
            session.execute(
                update(jobs_t).where(jobs_t.c.id == job.id).values(status=status.value, **values)
            )
            if status == JobStatus.FAILED:
                at = values.get("finished_at", NOW)
                session.execute(
                    insert(events_t),
                    [
                        new_event(job.id, JobStatus.RETRYING, 1, at, message="first try"),
                        new_event(
                            job.id,
                            JobStatus.FAILED,
                            2,
                            at,
                            message=values["error"]["message"],
                            traceback=traceback,
                        ),
                    ],
                )
        with any_db() as session:
            found = session.get(Job, job.id)
            assert found is not None
            return found

    return make_


# --- throughput ---------------------------------------------------------------------------


def test_every_minute_of_the_window_is_there_oldest_first(
    any_db: sessionmaker[Session],
) -> None:
    series = dashboard.throughput(any_db, minutes=60, now=NOW)
    assert len(series) == 60
    assert series[-1].at == NOW.replace(second=0)
    assert series[0].at == NOW.replace(second=0) - 59 * MINUTE
    assert all(m == Minute(m.at) for m in series)
    assert dashboard.failure_rate(series) is None


def test_jobs_are_counted_in_the_minute_they_finished_by_outcome(
    any_db: sessionmaker[Session], make: MakeJob
) -> None:
    this_minute = NOW.replace(second=0)
    make(JobStatus.SUCCEEDED, finished_at=NOW - dt.timedelta(seconds=1))
    make(JobStatus.SUCCEEDED, finished_at=this_minute)
    make(JobStatus.FAILED, finished_at=this_minute + dt.timedelta(seconds=5))
    make(JobStatus.CANCELLED, finished_at=this_minute - dt.timedelta(milliseconds=10))
    make(JobStatus.SUCCEEDED, finished_at=this_minute - 10 * MINUTE)
    make(JobStatus.FAILED, finished_at=this_minute - 59 * MINUTE)
    make(JobStatus.SUCCEEDED, finished_at=this_minute - 60 * MINUTE)  # before the window
    make(JobStatus.RUNNING)  # not finished

    series = dashboard.throughput(any_db, minutes=60, now=NOW)

    assert series[-1] == Minute(this_minute, succeeded=2, failed=1)
    assert series[-2] == Minute(this_minute - MINUTE, cancelled=1)
    assert series[-11] == Minute(this_minute - 10 * MINUTE, succeeded=1)
    assert series[0] == Minute(this_minute - 59 * MINUTE, failed=1)
    assert sum(m.finished for m in series) == 6
    assert dashboard.failure_rate(series) == pytest.approx(2 / 6)


def test_the_overview_has_the_series_the_queues_and_the_live_workers(
    any_db: sessionmaker[Session], make: MakeJob
) -> None:
    make(JobStatus.QUEUED)
    make(JobStatus.FAILED, finished_at=utcnow())
    worker = workers.WorkerProcess("w1", "system", "host", 42, ["system"], 8, utcnow())
    workers.beat(any_db, worker, 0)

    seen = dashboard.overview(
        any_db, worker_timeout=dt.timedelta(seconds=30), queue_names=["reports"]
    )

    assert len(seen.series) == 60
    assert seen.failure_rate == 1.0
    assert [q.queue for q in seen.queues] == ["reports", "system"]
    assert seen.queues[1].waiting == 1
    assert set(seen.oldest_waiting) == {"reports", "system"}
    assert [w.id for w in seen.workers] == ["w1"]
    assert seen.workers_by_pool == {"system": 1}


def test_a_paused_queues_backlog_and_arrivals_ask_for_no_worker(
    any_db: sessionmaker[Session], make: MakeJob
) -> None:
    # Jobs pile up in a paused queue: an autoscaler fed the signal must not add workers that
    # can take none of them. A job that still runs there keeps one process.
    admin = create_user(any_db, "admin@example.com", Role.ADMIN)
    now = utcnow()
    for _ in range(3):
        make(JobStatus.SUCCEEDED, started_at=now - MINUTE, finished_at=now - MINUTE / 2)
    parked = [make(JobStatus.QUEUED) for _ in range(200)]
    settings = Settings(capacity_drain_seconds=10, capacity_target_utilization=0.5)

    def system() -> capacity.PoolCapacity:
        return next(p for p in capacity.desired(any_db, settings) if p.pool == "system")

    busy = system()
    assert busy.backlog == 200 and busy.desired == settings.capacity_max_workers

    queue_pauses.pause(any_db, "system", admin)
    paused = system()
    assert (paused.paused, paused.backlog, paused.arrival_per_second) == (["system"], 0, 0)
    assert (paused.busy_threads, paused.desired) == (0, 0)
    with transaction(any_db) as session:
        session.execute(update(jobs_t).where(jobs_t.c.id == parked[0].id).values(status="running"))
    assert (system().running, system().desired) == (1, 1)


def test_the_series_reads_the_finished_jobs_index(pg_db: sessionmaker[Session]) -> None:
    start = NOW.replace(second=0) - 59 * MINUTE
    with pg_db() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            session.scalars(
                text(
                    "EXPLAIN SELECT status, count(*) FROM jobs WHERE status IN "
                    "('succeeded', 'failed', 'cancelled') AND finished_at >= :start "
                    "AND finished_at < :end GROUP BY status"
                ),
                {"start": start, "end": start + 60 * MINUTE},
            )
        )
    assert "ix_jobs_finished_finished_at" in plan


# --- error groups -------------------------------------------------------------------------


def test_failed_jobs_are_grouped_by_type_and_error_type(
    any_db: sessionmaker[Session], make: MakeJob
) -> None:
    first = make(JobStatus.FAILED, finished_at=NOW - 3 * MINUTE)
    newest = make(JobStatus.FAILED, finished_at=NOW - MINUTE)
    make(JobStatus.FAILED, error_type="KeyError", finished_at=NOW - 2 * MINUTE)
    make(JobStatus.FAILED, job_type="system.echo", finished_at=NOW - 30 * MINUTE)
    make(JobStatus.RETRYING, error={"type": "ValueError", "message": "again"})  # not failed
    make(JobStatus.SUCCEEDED, finished_at=NOW)

    found = error_groups.groups(any_db)

    assert [(g.job_type, g.error_type, g.count) for g in found] == [
        ("system.fail", "ValueError", 2),
        ("system.fail", "KeyError", 1),
        ("system.echo", "ValueError", 1),
    ]
    top = found[0]
    assert (top.first_seen, top.last_seen) == (first.finished_at, newest.finished_at)
    assert top.sample_id == newest.id
    assert top.message == "ValueError in system.fail"
    assert top.traceback is None
    assert len(error_groups.groups(any_db, limit=1)) == 1


def test_a_group_has_its_newest_jobs_traceback(
    any_db: sessionmaker[Session], make: MakeJob
) -> None:
    make(JobStatus.FAILED, finished_at=NOW - MINUTE, traceback="Traceback: old")
    newest = make(JobStatus.FAILED, finished_at=NOW, traceback="Traceback: new")

    found = error_groups.group(any_db, "system.fail", "ValueError")

    assert found is not None
    assert (found.count, found.sample_id) == (2, newest.id)
    assert found.traceback == "Traceback: new"
    assert found.message == "ValueError in system.fail"
    assert error_groups.group(any_db, "system.fail", "KeyError") is None


def test_a_group_without_a_traceback_shows_its_error_message(
    any_db: sessionmaker[Session], make: MakeJob
) -> None:
    make(JobStatus.FAILED, error_type=None)
    found = error_groups.group(any_db, "system.fail", None)
    assert found is not None
    assert (found.error_type, found.count, found.traceback) == (None, 1, None)
    assert found.message == "None in system.fail"


def test_a_groups_jobs_come_in_pages_newest_first(
    any_db: sessionmaker[Session], make: MakeJob
) -> None:
    made = [make(JobStatus.FAILED, finished_at=NOW - i * MINUTE) for i in range(5)]
    same_time = make(JobStatus.FAILED, finished_at=NOW - 2 * MINUTE)
    make(JobStatus.FAILED, error_type="KeyError", finished_at=NOW)

    pages: list[list[uuid.UUID]] = []
    after = None
    while True:
        page = error_groups.jobs_in_group(any_db, "system.fail", "ValueError", limit=2, after=after)
        if not page:
            break
        pages.append([j.id for j in page])
        after = page[-1].id
    seen = [job_id for page in pages for job_id in page]
    assert len(seen) == 6 and len(set(seen)) == 6
    assert seen[:2] == [made[0].id, made[1].id]
    assert set(seen[2:4]) == {made[2].id, same_time.id}
    assert seen[4:] == [made[3].id, made[4].id]


def test_the_groups_are_read_from_their_index_only(pg_db: sessionmaker[Session]) -> None:
    with pg_db() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            session.scalars(
                text(
                    "EXPLAIN SELECT type, error_type, count(*), min(finished_at), "
                    "max(finished_at) FROM jobs WHERE status IN ('failed') "
                    "GROUP BY type, error_type"
                )
            )
        )
    # Index only on a table the visibility map covers (bench/dashboard.py measures that); a
    # small test table may get a bitmap scan of the same index: either way, no job row is
    # read for a job that did not fail.
    assert "ix_jobs_failed_type_error_type" in plan, plan


def test_the_finish_paths_keep_the_error_type(any_db: sessionmaker[Session], make: MakeJob) -> None:
    job = make(JobStatus.RUNNING, attempts=1)
    error = {"type": "ZeroDivisionError", "message": "division by zero"}
    assert runs.finish(any_db, job.id, 1, JobStatus.FAILED, error=error)
    with any_db() as session:
        found = session.get(Job, job.id)
        assert found is not None and found.error_type == "ZeroDivisionError"
    assert [g.error_type for g in error_groups.groups(any_db)] == ["ZeroDivisionError"]


def test_error_type_of_cuts_long_names() -> None:
    assert error_type_of(None) is None
    assert error_type_of({"message": "no type"}) is None
    assert error_type_of({"type": "E" * 300}) == "E" * 200


# --- acting on a group --------------------------------------------------------------------


@pytest.fixture
def operator(any_db: sessionmaker[Session]) -> User:
    return create_user(any_db, "operator@example.com", Role.OPERATOR)


def _audit(db: sessionmaker[Session]) -> list[AuditEvent]:
    with db() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


_failed = jobs_t.c.status == JobStatus.FAILED.value


def _count(db: sessionmaker[Session], table: Any, *where: Any) -> int:
    with db() as session:
        return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def test_discarding_a_group_deletes_its_jobs_and_events_in_batches(
    any_db: sessionmaker[Session],
    make: MakeJob,
    operator: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(error_groups, "BATCH", 2)
    group = [make(JobStatus.FAILED, finished_at=NOW - i * MINUTE) for i in range(5)]
    other = make(JobStatus.FAILED, error_type="KeyError")

    first = error_groups.discard_group(any_db, "system.fail", "ValueError", operator, limit=3)
    assert (first.count, first.more) == (3, True)
    rest = error_groups.discard_group(any_db, "system.fail", "ValueError", operator)
    assert (rest.count, rest.more) == (2, False)

    ids = [j.id for j in group]
    assert _count(any_db, jobs_t, jobs_t.c.id.in_(ids)) == 0
    assert _count(any_db, events_t, events_t.c.job_id.in_(ids)) == 0
    assert _count(any_db, jobs_t, jobs_t.c.id == other.id) == 1
    assert _count(any_db, events_t, events_t.c.job_id == other.id) == 3  # queued, retrying, failed
    found = _audit(any_db)
    assert [(e.action, e.actor_id, e.details["count"]) for e in found] == [
        ("error_group_discarded", operator.id, 3),
        ("error_group_discarded", operator.id, 2),
    ]
    assert found[0].details["job_type"] == "system.fail"
    assert found[0].details["error_type"] == "ValueError"


def test_retrying_a_group_queues_its_jobs_again(
    any_db: sessionmaker[Session], make: MakeJob, operator: User
) -> None:
    group = [make(JobStatus.FAILED, attempts=4) for _ in range(3)]
    other = make(JobStatus.FAILED, error_type="KeyError")
    enqueuer, announcer = RecordingEnqueuer(), RecordingAnnouncer()

    done = error_groups.retry_group(
        any_db, enqueuer, announcer, JOBS, "system.fail", "ValueError", operator
    )

    assert (done.count, done.more) == (3, False)
    assert {m.job_id for m in enqueuer.messages} == {j.id for j in group}
    with any_db() as session:
        assert {session.get(Job, j.id).status for j in group} == {"queued"}  # type: ignore[union-attr]
        assert session.get(Job, other.id).status == "failed"  # type: ignore[union-attr]
    [event] = _audit(any_db)
    assert (event.action, event.details["count"]) == ("error_group_retried", 3)
    assert error_groups.group(any_db, "system.fail", "ValueError") is None


def test_a_group_action_bounded_by_the_newest_failure_seen_leaves_later_ones(
    any_db: sessionmaker[Session], make: MakeJob, operator: User
) -> None:
    # The operator saw the group up to NOW; two more jobs failed while they confirmed.
    seen = [make(JobStatus.FAILED, finished_at=NOW - i * MINUTE) for i in range(3)]
    later = [make(JobStatus.FAILED, finished_at=NOW + i * MINUTE) for i in (1, 2)]
    group = ("system.fail", "ValueError")

    retried = error_groups.retry_group(
        any_db, RecordingEnqueuer(), RecordingAnnouncer(), JOBS, *group, operator, up_to=NOW
    )
    assert (retried.count, retried.more) == (3, False)
    with any_db() as session:
        assert {session.get(Job, j.id).status for j in seen} == {"queued"}  # type: ignore[union-attr]
    assert _count(any_db, jobs_t, jobs_t.c.id.in_([j.id for j in later]), _failed) == 2

    bound = NOW + MINUTE
    discarded = error_groups.discard_group(any_db, *group, operator, up_to=bound)
    assert (discarded.count, discarded.more) == (1, False)
    assert _count(any_db, jobs_t, jobs_t.c.id == later[1].id, _failed) == 1
    assert [e.details["up_to"] for e in _audit(any_db)] == [NOW.isoformat(), bound.isoformat()]


def test_a_group_of_a_job_type_this_server_does_not_know_is_not_retried(
    any_db: sessionmaker[Session], make: MakeJob, operator: User
) -> None:
    gone = [make(JobStatus.FAILED, job_type="removed.report") for _ in range(3)]
    enqueuer = RecordingEnqueuer()
    with pytest.raises(ConflictError, match=r"removed\.report"):
        error_groups.retry_group(
            any_db, enqueuer, RecordingAnnouncer(), JOBS, "removed.report", "ValueError", operator
        )
    assert enqueuer.messages == []
    assert _count(any_db, jobs_t, jobs_t.c.id.in_([j.id for j in gone]), _failed) == 3
    assert _audit(any_db) == []  # nothing was done
    assert error_groups.discard_group(any_db, "removed.report", "ValueError", operator).count == 3


def test_a_group_without_an_error_type_is_acted_on_as_one(
    any_db: sessionmaker[Session], make: MakeJob, operator: User
) -> None:
    untyped = make(JobStatus.FAILED, error_type=None)
    make(JobStatus.FAILED)
    done = error_groups.discard_group(any_db, "system.fail", None, operator)
    assert done.count == 1
    assert _count(any_db, jobs_t, jobs_t.c.id == untyped.id) == 0
    assert [g.error_type for g in error_groups.groups(any_db)] == ["ValueError"]


def test_members_act_on_no_group(any_db: sessionmaker[Session], make: MakeJob, owner: User) -> None:
    make(JobStatus.FAILED)
    with pytest.raises(PermissionDeniedError):
        error_groups.discard_group(any_db, "system.fail", "ValueError", owner)
    with pytest.raises(PermissionDeniedError):
        error_groups.retry_group(
            any_db,
            RecordingEnqueuer(),
            RecordingAnnouncer(),
            JOBS,
            "system.fail",
            "ValueError",
            owner,
        )
    assert _count(any_db, jobs_t) == 1
    assert _audit(any_db) == []
