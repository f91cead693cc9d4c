"""What a running job reaches through `ctx`, run through the lifecycle on SQLite with a
container of fakes: RetryLater, permanent exceptions, child jobs, resources, settings, db."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor import bootstrap
from conveyor.errors import RetryLater, UnknownResourceError
from conveyor.models import Job, JobStatus, User
from conveyor.models.base import utcnow
from conveyor.registry import JobContext, Payload, Registry, job
from conveyor.settings import Settings
from conveyor.workers.lifecycle import JobLifecycle
from tests import stack
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer

REGISTRY = Registry()
LEASE = dt.timedelta(seconds=30)

#: What the `tests.ctx_hook` job does while it runs (set by a test).
HOOK: list[Callable[[JobContext], Any]] = []


class Numbers(Payload):
    n: int = Field(1, ge=0)


class Spawn(Payload):
    key: str | None = None
    fail_first: bool = True
    delay: float | None = None


class CardDeclinedError(Exception):
    """Retrying cannot help: the job type lists it as permanent."""


@job(queue="tests", name="tests.rate_limited", max_backoff=dt.timedelta(hours=1), registry=REGISTRY)
def rate_limited(payload: Numbers) -> None:
    raise RetryLater(30, "the provider asked to wait 30 s")


@job(queue="tests", name="tests.charge", permanent=(CardDeclinedError,), registry=REGISTRY)
def charge(payload: Numbers) -> None:
    raise CardDeclinedError(f"card {payload.n} declined")


@job(queue="tests", name="tests.child", registry=REGISTRY)
def child(payload: Numbers) -> int:
    return payload.n


@job(queue="tests", name="tests.spawn", registry=REGISTRY)
def spawn(payload: Spawn, ctx: JobContext) -> str:
    """Submit a child (with the given key), then fail the first attempt."""
    child_id = ctx.submit("tests.child", {"n": 5}, idempotency_key=payload.key, delay=payload.delay)
    if payload.fail_first and ctx.attempt == 1:
        raise RuntimeError("failed after submitting the child")
    return str(child_id)


@job(queue="tests", name="tests.ctx_hook", registry=REGISTRY)
def ctx_hook(payload: Numbers, ctx: JobContext) -> str:
    for step in HOOK:
        step(ctx)
    return "done"


class Mailer:
    """A resource a pool registers; `close` is called when the container closes."""

    built = 0

    def __init__(self, settings: Settings) -> None:
        Mailer.built += 1
        self.settings = settings
        self.closed = False

    def close(self) -> None:
        self.closed = True


def make_mailer(container: bootstrap.Container) -> Mailer:
    return Mailer(container.settings)


SETTINGS = stack.test_settings(database_url="sqlite://", broker_url="stub://", redis_url=None)


@pytest.fixture
def container(
    db: sessionmaker[Session], announcer: RecordingAnnouncer, enqueuer: RecordingEnqueuer
) -> Iterator[bootstrap.Container]:
    Mailer.built = 0
    container = bootstrap.Container(
        SETTINGS,
        bootstrap.ProcessRole.WORKER,
        registry=REGISTRY,
        db=db,
        enqueuer=enqueuer,
        announcements=announcer,  # type: ignore[arg-type]
        resources={"mailer": make_mailer},
    )
    yield container
    container.close()


@pytest.fixture
def lifecycle(container: bootstrap.Container) -> Iterator[JobLifecycle]:
    HOOK.clear()
    lifecycle = JobLifecycle(container, lease=LEASE)
    yield lifecycle
    lifecycle.after_worker_shutdown(None, None)  # type: ignore[arg-type]
    HOOK.clear()


@pytest.fixture
def make(make_job: MakeJob) -> Callable[..., Job]:
    def make_(job_type: str, *, max_retries: int = 3, **payload: Any) -> Job:
        return make_job(job_type=job_type, queue="tests", payload=payload, max_retries=max_retries)

    return make_


def run(lifecycle: JobLifecycle, row: Job) -> None:
    lifecycle.run(REGISTRY.get(row.type), str(row.id))


def children_of(db: sessionmaker[Session], parent_id: uuid.UUID) -> list[Job]:
    with db() as session:
        return list(session.scalars(select(Job).where(Job.parent_id == parent_id)))


# --- RetryLater and permanent exceptions ----------------------------------------------------


def test_retry_later_sets_the_next_attempt_that_many_seconds_ahead(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
) -> None:
    row = make("tests.rate_limited")
    run(lifecycle, row)
    after = load(row.id)
    assert after.status == JobStatus.RETRYING
    assert after.next_attempt_at is not None
    expected = utcnow() + dt.timedelta(seconds=30)
    assert abs((after.next_attempt_at - expected).total_seconds()) <= 1
    assert after.error == {"type": "RetryLater", "message": "the provider asked to wait 30 s"}
    [message] = enqueuer.messages
    assert message.job_id == row.id and message.delay_ms == 30_000
    assert announcer.announced[-1] == (row.id, "retrying")


def test_retry_later_on_the_last_attempt_fails_the_job(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
) -> None:
    row = make("tests.rate_limited", max_retries=0)
    run(lifecycle, row)
    failed = load(row.id)
    assert (failed.status, failed.attempts) == (JobStatus.FAILED, 1)
    assert failed.next_attempt_at is None
    assert enqueuer.messages == []


def test_a_permanent_exception_fails_the_job_at_once_with_retries_left(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
) -> None:
    row = make("tests.charge", max_retries=5, n=42)
    run(lifecycle, row)
    failed = load(row.id)
    assert (failed.status, failed.attempts) == (JobStatus.FAILED, 1)
    assert failed.error is not None
    traceback = failed.error.pop("traceback")
    assert failed.error == {"type": "CardDeclinedError", "message": "card 42 declined"}
    assert traceback.rstrip().endswith("CardDeclinedError: card 42 declined")
    assert failed.finished_at is not None and failed.next_attempt_at is None
    assert enqueuer.messages == []
    run(lifecycle, row)  # a late duplicate message changes nothing
    assert load(row.id).attempts == 1


# --- ctx.submit -----------------------------------------------------------------------------


def test_a_child_submitted_by_a_running_job_records_its_parent_and_owner(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
    member: User,
) -> None:
    parent = make("tests.spawn", fail_first=False)
    run(lifecycle, parent)
    done = load(parent.id)
    assert done.status == JobStatus.SUCCEEDED
    [kid] = children_of(db, parent.id)
    assert done.result == str(kid.id)
    assert kid.parent_id == parent.id
    assert kid.owner_id == member.id == parent.owner_id
    assert (kid.type, kid.queue, kid.status) == ("tests.child", "tests", JobStatus.QUEUED)
    assert kid.payload == {"n": 5}
    assert kid.max_retries == 3  # the child's own type decides, not the parent
    assert [m.job_id for m in enqueuer.messages] == [kid.id]  # published at once


def test_a_retried_parent_that_passes_the_same_key_does_not_create_a_second_child(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    set_job: Callable[..., None],
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
) -> None:
    parent = make("tests.spawn", key="invoice-7")
    run(lifecycle, parent)
    assert load(parent.id).status == JobStatus.RETRYING
    [first] = children_of(db, parent.id)
    set_job(parent.id, next_attempt_at=utcnow())  # the retry is due
    run(lifecycle, parent)
    done = load(parent.id)
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 2)
    assert [kid.id for kid in children_of(db, parent.id)] == [first.id]
    assert done.result == str(first.id)
    child_messages = [m for m in enqueuer.messages if m.job_id == first.id]
    assert len(child_messages) == 1  # the replay published nothing


def test_a_retried_parent_without_a_key_creates_a_child_per_attempt(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    set_job: Callable[..., None],
    db: sessionmaker[Session],
) -> None:
    parent = make("tests.spawn")
    run(lifecycle, parent)
    set_job(parent.id, next_attempt_at=utcnow())
    run(lifecycle, parent)
    assert len(children_of(db, parent.id)) == 2


def test_a_child_submitted_with_a_delay_is_scheduled_and_not_published(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    db: sessionmaker[Session],
    enqueuer: RecordingEnqueuer,
) -> None:
    parent = make("tests.spawn", fail_first=False, delay=120)
    run(lifecycle, parent)
    [kid] = children_of(db, parent.id)
    assert kid.status == JobStatus.SCHEDULED
    assert kid.next_attempt_at is not None
    expected = utcnow() + dt.timedelta(seconds=120)
    assert abs((kid.next_attempt_at - expected).total_seconds()) <= 2
    assert enqueuer.messages == []


def test_a_child_with_an_invalid_payload_fails_the_parent_at_once(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    db: sessionmaker[Session],
) -> None:
    row = make("tests.ctx_hook", max_retries=3)  # retrying cannot make the payload valid
    HOOK.append(lambda ctx: ctx.submit("tests.child", {"n": -1}))
    run(lifecycle, row)
    failed = load(row.id)
    assert (failed.status, failed.attempts) == (JobStatus.FAILED, 1)
    assert failed.error is not None and failed.error["type"] == "PermanentJobError"
    assert "the child job was refused" in failed.error["message"]
    assert children_of(db, row.id) == []


# --- resources, settings and the database ---------------------------------------------------


def test_a_registered_resource_is_built_once_and_shared_by_jobs(
    lifecycle: JobLifecycle,
    container: bootstrap.Container,
    make: Callable[..., Job],
    load: Callable[..., Job],
) -> None:
    seen: list[Any] = []
    HOOK.append(lambda ctx: seen.append(ctx.resource("mailer")))
    rows = [make("tests.ctx_hook") for _ in range(3)]
    for row in rows:
        run(lifecycle, row)
    assert all(load(row.id).status == JobStatus.SUCCEEDED for row in rows)
    assert len(seen) == 3 and all(mailer is seen[0] for mailer in seen)
    assert Mailer.built == 1
    assert seen[0].settings is SETTINGS
    container.close()
    assert seen[0].closed is True


def test_an_unregistered_resource_raises_unknown_resource_error(
    lifecycle: JobLifecycle, make: Callable[..., Job], load: Callable[..., Job]
) -> None:
    caught: list[BaseException] = []

    def ask(ctx: JobContext) -> None:
        with pytest.raises(UnknownResourceError) as raised:
            ctx.resource("object_store")
        caught.append(raised.value)

    HOOK.append(ask)
    row = make("tests.ctx_hook")
    run(lifecycle, row)
    assert load(row.id).status == JobStatus.SUCCEEDED
    [error] = caught
    assert "'object_store'" in str(error) and "mailer" in str(error)  # says what is known


def test_a_job_that_needs_a_missing_resource_fails_its_attempt(
    lifecycle: JobLifecycle, make: Callable[..., Job], load: Callable[..., Job]
) -> None:
    HOOK.append(lambda ctx: ctx.resource("object_store"))
    row = make("tests.ctx_hook", max_retries=0)
    run(lifecycle, row)
    failed = load(row.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and failed.error["type"] == "UnknownResourceError"


def test_ctx_gives_the_processes_settings_and_database(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    member: User,
) -> None:
    seen: dict[str, Any] = {}

    def look(ctx: JobContext) -> None:
        seen["settings"] = ctx.settings
        with ctx.db() as session:
            own = session.get(Job, ctx.job_id)
            assert own is not None
            seen["status"], seen["attempts"] = own.status, own.attempts
        seen["owner"], seen["parent"] = ctx.owner_id, ctx.parent_id
        with ctx.db.begin() as session:  # commits
            session.get(User, member.id).email = "renamed@example.com"  # type: ignore[union-attr]

    HOOK.append(look)
    row = make("tests.ctx_hook")
    run(lifecycle, row)
    assert load(row.id).status == JobStatus.SUCCEEDED
    assert seen == {
        "settings": SETTINGS,
        "status": "running",
        "attempts": 1,
        "owner": member.id,
        "parent": None,
    }
    assert seen["settings"] is SETTINGS
    with lifecycle.container.db() as session:
        assert session.get(User, member.id).email == "renamed@example.com"  # type: ignore[union-attr]


def test_a_child_knows_its_parent_through_ctx(
    lifecycle: JobLifecycle,
    make: Callable[..., Job],
    load: Callable[..., Job],
    db: sessionmaker[Session],
) -> None:
    parent = make("tests.ctx_hook")
    ids: list[uuid.UUID] = []
    HOOK.append(lambda ctx: ids.append(ctx.submit(ctx_hook, Numbers(n=2))))
    run(lifecycle, parent)
    [kid_id] = ids
    HOOK.clear()
    parents: list[uuid.UUID | None] = []
    HOOK.append(lambda ctx: parents.append(ctx.parent_id))
    run(lifecycle, load(kid_id))
    assert parents == [parent.id]
    assert load(kid_id).status == JobStatus.SUCCEEDED
