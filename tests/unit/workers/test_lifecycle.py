"""The worker side of a job, run directly (no broker): claim, run, record, retry, stop."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg.errors import AdminShutdown
from pydantic import Field
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from conveyor import bootstrap
from conveyor.db import make_engine, make_sessionmaker
from conveyor.errors import PermanentJobError
from conveyor.models import Job, JobStatus, User
from conveyor.models.base import utcnow
from conveyor.registry import JobContext, Payload, Registry, job
from conveyor.services import jobs, outbox, runs
from conveyor.services.jobs import JobMessage
from conveyor.workers.lifecycle import CLAIM_RETRY_MS, JobLifecycle
from tests import stack
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer

REGISTRY = Registry()
LEASE = dt.timedelta(seconds=30)

#: What the `tests.hook` job does while it runs (set by a test).
HOOK: list[Callable[[JobContext], Any]] = []


class Numbers(Payload):
    n: int = Field(1, ge=0)


@job(queue="tests", name="tests.double", registry=REGISTRY)
def double(payload: Numbers) -> dict[str, int]:
    return {"n": payload.n * 2}


@job(queue="tests", name="tests.async_double", registry=REGISTRY)
async def async_double(payload: Numbers) -> int:
    return payload.n * 2


@job(
    queue="tests",
    name="tests.broken",
    min_backoff=dt.timedelta(seconds=1),
    max_backoff=dt.timedelta(seconds=10),
    registry=REGISTRY,
)
def broken(payload: Numbers) -> None:
    raise RuntimeError(f"broken {payload.n}")


@job(queue="tests", name="tests.permanent", registry=REGISTRY)
def permanent(payload: Numbers) -> None:
    raise PermanentJobError("this cannot work")


@job(queue="tests", name="tests.not_json", registry=REGISTRY)
def not_json(payload: Numbers) -> object:
    return object()


@job(queue="tests", name="tests.hook", registry=REGISTRY)
def hook(payload: Numbers, ctx: JobContext) -> str:
    for step in HOOK:
        step(ctx)
    return "done"


@job(queue="tests", name="tests.busy", time_limit=dt.timedelta(milliseconds=200), registry=REGISTRY)
def busy(payload: Numbers) -> None:
    deadline = time.monotonic() + 5  # bounded, should the time limit not fire
    while time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def lifecycle(
    db: sessionmaker[Session], announcer: RecordingAnnouncer, enqueuer: RecordingEnqueuer
) -> Iterator[JobLifecycle]:
    HOOK.clear()
    container = _container(db, announcer, enqueuer)
    lifecycle = JobLifecycle(container, lease=LEASE)
    yield lifecycle
    lifecycle.after_worker_shutdown(None, None)  # type: ignore[arg-type]
    container.close()
    HOOK.clear()


def _container(
    db: sessionmaker[Session], announcer: RecordingAnnouncer, enqueuer: RecordingEnqueuer
) -> bootstrap.Container:
    return bootstrap.Container(
        stack.test_settings(database_url="sqlite://", broker_url="stub://", redis_url=None),
        bootstrap.ProcessRole.WORKER,
        registry=REGISTRY,
        db=db,
        enqueuer=enqueuer,
        announcements=announcer,  # type: ignore[arg-type]
    )


@pytest.fixture
def make(make_job: MakeJob) -> Callable[..., Job]:
    def make_(job_type: str, *, max_retries: int = 0, **payload: Any) -> Job:
        return make_job(job_type=job_type, queue="tests", payload=payload, max_retries=max_retries)

    return make_


def run(lifecycle: JobLifecycle, row: Job) -> None:
    lifecycle.run(REGISTRY.get(row.type), str(row.id))


def test_a_successful_job_records_its_result(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    announcer: RecordingAnnouncer,
    enqueuer: RecordingEnqueuer,
) -> None:
    row = make("tests.double", n=21)
    run(lifecycle, row)
    done = load(row.id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == {"n": 42}
    assert done.attempts == 1
    assert announcer.announced == [(row.id, "running"), (row.id, "succeeded")]
    assert enqueuer.messages == []


def test_an_async_job_records_its_result(
    lifecycle: JobLifecycle, make: Callable[..., Job], load: Callable[..., Job]
) -> None:
    row = make("tests.async_double", n=4)
    run(lifecycle, row)
    assert load(row.id).result == 8


def test_a_failure_with_retries_left_schedules_a_delayed_retry(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    announcer: RecordingAnnouncer,
    enqueuer: RecordingEnqueuer,
) -> None:
    row = make("tests.broken", max_retries=2, n=7)
    before = utcnow()
    run(lifecycle, row)
    retrying = load(row.id)
    assert retrying.status == JobStatus.RETRYING
    assert retrying.error is not None
    traceback = retrying.error.pop("traceback")
    assert retrying.error == {"type": "RuntimeError", "message": "broken 7"}
    assert 'in broken\n    raise RuntimeError(f"broken {payload.n}")' in traceback
    assert retrying.next_attempt_at is not None
    assert before + dt.timedelta(seconds=0.5) <= retrying.next_attempt_at
    assert retrying.next_attempt_at <= utcnow() + dt.timedelta(seconds=1)
    assert retrying.published_at is not None  # the retry message was confirmed
    [message] = enqueuer.messages
    assert (message.job_id, message.type, message.queue) == (row.id, "tests.broken", "tests")
    assert 500 <= message.delay_ms <= 1000  # min_backoff 1 s, halved at most by the jitter
    assert announcer.announced[-1] == (row.id, "retrying")


def test_a_retry_the_broker_refuses_is_left_to_the_outbox_sweep(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    db: sessionmaker[Session],
) -> None:
    # Dramatiq acknowledges a message whose retry could not be enqueued; here the row keeps
    # the retry, unpublished, and the sweep publishes it once the broker answers again.
    row = make("tests.broken", max_retries=2)
    enqueuer.fail = True
    run(lifecycle, row)
    retrying = load(row.id)
    assert (retrying.status, retrying.published_at) == (JobStatus.RETRYING, None)
    enqueuer.fail = False
    outbox.publish_pending(
        db, enqueuer, grace=dt.timedelta(0), requeue_after=dt.timedelta(minutes=15)
    )
    [message] = enqueuer.messages
    assert message.job_id == row.id and message.delay_ms > 0
    assert load(row.id).published_at is not None


def test_the_last_attempts_failure_fails_the_job(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
) -> None:
    row = make("tests.broken", max_retries=1)
    run(lifecycle, row)
    assert load(row.id).status == JobStatus.RETRYING
    set_job(row.id, next_attempt_at=utcnow())  # the retry is due
    run(lifecycle, row)
    failed = load(row.id)
    assert failed.status == JobStatus.FAILED
    assert failed.attempts == 2
    assert failed.finished_at is not None
    assert len(enqueuer.messages) == 1  # only the first failure was retried


def test_a_permanent_error_fails_the_job_without_retrying(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
) -> None:
    row = make("tests.permanent", max_retries=3)
    run(lifecycle, row)
    failed = load(row.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None
    assert "traceback" in failed.error
    del failed.error["traceback"]
    assert failed.error == {"type": "PermanentJobError", "message": "this cannot work"}
    assert enqueuer.messages == []


def test_a_payload_the_type_no_longer_accepts_fails_the_job(
    lifecycle: JobLifecycle, make: Callable[..., Job], load: Callable[..., Job]
) -> None:
    row = make("tests.double", max_retries=3, n=-1)
    run(lifecycle, row)
    failed = load(row.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and failed.error["type"] == "ValidationError"


def test_a_result_that_is_not_json_fails_the_job(
    lifecycle: JobLifecycle, make: Callable[..., Job], load: Callable[..., Job]
) -> None:
    row = make("tests.not_json", max_retries=3)
    run(lifecycle, row)
    failed = load(row.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and failed.error["type"] == "UnserializableResult"


def test_progress_is_recorded_and_a_cancel_seen_there_stops_the_job(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    history: Callable[..., Any],
    db: sessionmaker[Session],
    member: User,
) -> None:
    row = make("tests.hook")
    reached: list[str] = []

    def first_half(ctx: JobContext) -> None:
        assert ctx.attempt == 1 and ctx.job_id == row.id and not ctx.cancelled
        ctx.progress(0.5, "half way")
        jobs.cancel(db, RecordingAnnouncer(), row.id, member)
        ctx.progress(0.75)  # sees the cancel and raises
        reached.append("after cancel")

    HOOK.append(first_half)
    run(lifecycle, row)
    cancelled = load(row.id)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.error == {"type": "Cancelled", "message": "cancelled while running"}
    assert cancelled.progress == 0.75  # the report that saw the cancel is kept
    assert reached == []
    assert ("progress", "running", 1) in history(row.id)


def test_the_heartbeat_delivers_a_cancel_to_a_sleeping_job(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    db: sessionmaker[Session],
    member: User,
) -> None:
    row = make("tests.hook")

    def cancel_then_sleep(ctx: JobContext) -> None:
        jobs.cancel(db, RecordingAnnouncer(), row.id, member)
        ctx.sleep(10)  # woken by the heartbeat's lease renewal

    HOOK.append(cancel_then_sleep)
    lifecycle.before_worker_boot(None, None)  # type: ignore[arg-type]
    started = time.monotonic()
    run(lifecycle, row)
    assert time.monotonic() - started < 5
    assert load(row.id).status == JobStatus.CANCELLED


def test_the_heartbeat_enforces_the_time_limit(
    lifecycle: JobLifecycle, make: Callable[..., Job], load: Callable[..., Job]
) -> None:
    row = make("tests.busy")
    lifecycle.before_worker_boot(None, None)  # type: ignore[arg-type]
    started = time.monotonic()
    run(lifecycle, row)
    assert time.monotonic() - started < 4
    failed = load(row.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None
    assert "JobTimeLimitError" in failed.error.pop("traceback")  # where the job was
    assert failed.error == {"type": "TimeLimitExceeded", "message": "time limit of 0.2s exceeded"}


def test_a_message_for_a_finished_job_changes_nothing(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    announcer: RecordingAnnouncer,
) -> None:
    row = make("tests.double", n=1)
    run(lifecycle, row)
    announcer.announced.clear()
    run(lifecycle, row)
    assert load(row.id).attempts == 1
    assert announcer.announced == []


def test_a_message_without_a_job_id_is_dropped(
    lifecycle: JobLifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    lifecycle.run(REGISTRY.get("tests.double"), "not-a-uuid")
    assert "carries no job id" in caplog.text


def test_a_claim_the_database_refuses_is_delivered_again_later(
    make: Callable[..., Job],
    tmp_path: Any,
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
) -> None:
    row = make("tests.double")
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'nowhere.db'}", pool_size=1)
    container = _container(make_sessionmaker(engine), RecordingAnnouncer(), enqueuer)
    run(JobLifecycle(container, lease=LEASE), row)
    container.close()
    engine.dispose()
    assert enqueuer.messages == [JobMessage(row.id, "tests.double", "tests", CLAIM_RETRY_MS)]
    assert load(row.id).status == JobStatus.QUEUED


def test_a_lost_worker_does_not_use_up_the_retries_of_a_failing_job(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    db: sessionmaker[Session],
    set_job: Callable[..., None],
) -> None:
    row = make("tests.broken", max_retries=1)
    assert runs.claim(db, row.id, worker="dies", lease=LEASE) is not None
    set_job(row.id, lease_expires_at=utcnow() - dt.timedelta(seconds=1))
    outbox.expire_leases(db, RecordingEnqueuer(), RecordingAnnouncer(), max_worker_losses=2)
    run(lifecycle, row)  # attempt 2: the job's own first failure; one retry left
    after = load(row.id)
    assert (after.attempts, after.worker_losses) == (2, 1)
    assert after.status == JobStatus.RETRYING


def test_a_job_cancelled_while_its_attempt_fails_ends_cancelled(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    announcer: RecordingAnnouncer,
    enqueuer: RecordingEnqueuer,
    db: sessionmaker[Session],
    member: User,
) -> None:
    row = make("tests.hook", max_retries=3)

    def cancel_then_fail(ctx: JobContext) -> None:
        jobs.cancel(db, RecordingAnnouncer(), row.id, member)
        raise RuntimeError("failed before the cancel was seen")

    HOOK.append(cancel_then_fail)
    run(lifecycle, row)
    assert load(row.id).status == JobStatus.CANCELLED
    assert announcer.announced[-1] == (row.id, "cancelled")
    assert enqueuer.messages == []


def test_an_attempt_that_no_longer_holds_its_job_stops_and_never_cancels_it(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    history: Callable[..., Any],
    set_job: Callable[..., None],
    db: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen once in the database-restart e2e test: a `system.sleep` that nobody cancelled
    ended `cancelled`. Its progress report found the row no longer running for its attempt,
    which stopped it as if cancelled; by the time it recorded that, attempt 1 was held again
    (here: the restart lost the claim's commit, and the job was claimed anew), so the guarded
    write matched and the job ended `cancelled`."""
    row = make("tests.hook")
    reached: list[str] = []

    def lose_the_claim(ctx: JobContext) -> None:
        # The database came back without this attempt's claim (asynchronous commits).
        set_job(row.id, status=JobStatus.QUEUED.value, attempts=0, lease_expires_at=None)
        ctx.progress(0.5)  # finds the row not running for attempt 1: stops
        reached.append("after the progress report")

    execute = lifecycle._execute

    def then_claimed_again(*args: Any) -> Any:
        outcome = execute(*args)
        # The job's message, delivered again, is claimed by another worker: attempt 1 again.
        assert runs.claim(db, row.id, worker="other", lease=LEASE) is not None
        return outcome

    HOOK.append(lose_the_claim)
    monkeypatch.setattr(lifecycle, "_execute", then_claimed_again)
    run(lifecycle, row)
    assert reached == []
    now = load(row.id)
    assert (now.status, now.attempts, now.worker) == (JobStatus.RUNNING, 1, "other")
    assert not now.cancel_requested and now.error is None
    assert ("status", "cancelled", 1) not in history(row.id)


def test_a_run_whose_lease_was_taken_back_is_stopped_by_the_heartbeat_and_records_nothing(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    history: Callable[..., Any],
    set_job: Callable[..., None],
    db: sessionmaker[Session],
    announcer: RecordingAnnouncer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    row = make("tests.hook")
    recorded: list[Any] = []
    monkeypatch.setattr(runs, "record", lambda *args: recorded.append(args))

    def taken_back_then_sleep(ctx: JobContext) -> None:
        # The worker was taken for dead (its lease ran out): the reconciler requeued the job.
        set_job(row.id, lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        assert outbox.expire_leases(db, RecordingEnqueuer(), announcer, max_worker_losses=2) == 1
        ctx.sleep(10)  # woken by the heartbeat's lease renewal

    HOOK.append(taken_back_then_sleep)
    lifecycle.before_worker_boot(None, None)  # type: ignore[arg-type]
    started = time.monotonic()
    run(lifecycle, row)
    assert time.monotonic() - started < 5
    assert recorded == []  # nothing: the reconciler decided
    now = load(row.id)
    assert (now.status, now.attempts, now.worker_losses) == (JobStatus.RETRYING, 1, 1)
    assert now.error is not None and now.error["type"] == "WorkerLost"
    assert history(row.id)[-1] == ("status", "retrying", 1)


# --- infrastructure failures -----------------------------------------------------------------


def dead_database() -> OperationalError:
    """What a pooled connection raises in the job's code after a database restart."""
    return OperationalError(
        "SELECT 1", {}, AdminShutdown("terminating connection"), connection_invalidated=True
    )


def test_a_database_failure_in_the_jobs_code_is_not_charged_to_the_job(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    set_job: Callable[..., None],
    history: Callable[..., Any],
) -> None:
    row = make("tests.hook", max_retries=0)  # no retries: its own failure would end it

    def meets_a_restart_once(ctx: JobContext) -> None:
        if ctx.attempt == 1:
            raise dead_database()

    HOOK.append(meets_a_restart_once)
    run(lifecycle, row)
    interrupted = load(row.id)
    assert interrupted.status == JobStatus.RETRYING
    assert (interrupted.attempts, interrupted.worker_losses) == (1, 1)
    assert interrupted.error is not None and interrupted.error["type"] == "OperationalError"
    set_job(row.id, next_attempt_at=utcnow())  # due now rather than after the backoff
    run(lifecycle, row)
    done = load(row.id)
    assert (done.status, done.attempts, done.worker_losses) == (JobStatus.SUCCEEDED, 2, 1)
    assert done.error is None
    assert [h for h in history(row.id) if h[0] == "status"][-3:] == [
        ("status", "retrying", 1),
        ("status", "running", 2),
        ("status", "succeeded", 2),
    ]


def test_a_job_that_always_meets_a_dead_database_ends_once_its_worker_losses_are_spent(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    set_job: Callable[..., None],
) -> None:
    row = make("tests.hook", max_retries=5)

    def meets_a_dead_database(ctx: JobContext) -> None:
        raise dead_database()

    HOOK.append(meets_a_dead_database)
    losses = lifecycle.container.settings.max_worker_losses
    for _ in range(losses + 1):
        set_job(row.id, next_attempt_at=utcnow())
        run(lifecycle, row)
    failed = load(row.id)
    assert (failed.status, failed.attempts) == (JobStatus.FAILED, losses + 1)
    assert failed.worker_losses == losses + 1
    assert failed.error is not None and "runs cut short" in failed.error["message"]


@pytest.mark.parametrize("failures", [2, 1000], ids=["blip", "outage-longer-than-the-lease"])
def test_progress_rides_out_the_database_or_is_dropped_without_failing_the_job(
    failures: int,
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    row = make("tests.hook", max_retries=0)
    real = runs.report_progress
    calls = iter(range(failures))

    def unreachable_for_a_while(*args: Any) -> Any:
        if next(calls, None) is not None:
            raise dead_database()
        return real(*args)

    monkeypatch.setattr(runs, "RECORD_RETRY_DELAYS", (0.01, 0.01, 0.01))
    monkeypatch.setattr(runs, "report_progress", unreachable_for_a_while)
    HOOK.append(lambda ctx: ctx.progress(0.5, "half way"))
    run(lifecycle, row)
    done = load(row.id)
    assert (done.status, done.attempts, done.worker_losses) == (JobStatus.SUCCEEDED, 1, 0)
    assert done.error is None
