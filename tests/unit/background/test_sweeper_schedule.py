"""The sweeper wakes for scheduled jobs: at the earliest due time it reads from the rows, and
sooner when a submission tells it (`wake_at`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor.background.sweeper import Sweeper
from conveyor.models import Job, JobStatus, User
from conveyor.models.base import utcnow
from conveyor.registry import JOBS
from conveyor.services import outbox
from conveyor.services.submissions import Submissions
from tests.stack import wait_until
from tests.unit.support import RecordingAnnouncer, RecordingEnqueuer

#: Far longer than any wait below: a pass that comes only after it is a missed wake-up.
INTERVAL = 60.0


@pytest.fixture
def sweeper(
    db: sessionmaker[Session], enqueuer: RecordingEnqueuer, announcer: RecordingAnnouncer
) -> Iterator[Sweeper]:
    sweeper = Sweeper(
        db,
        enqueuer,
        announcer,
        interval=INTERVAL,
        grace=dt.timedelta(seconds=30),
        requeue_after=dt.timedelta(minutes=15),
        max_worker_losses=2,
    )
    yield sweeper
    sweeper.stop()


@pytest.fixture
def subs(db: sessionmaker[Session], enqueuer: RecordingEnqueuer, sweeper: Sweeper) -> Submissions:
    """Submissions as the web process wires them: a scheduled job wakes the sweeper."""
    import conveyor.actors.system  # noqa: F401  (system.echo in JOBS)

    return Submissions(
        db, JOBS, enqueuer, max_delay=dt.timedelta(days=1), on_scheduled=sweeper.wake_at
    )


def promoted(load: Callable[..., Job], job: Job) -> bool:
    return load(job.id).status != JobStatus.SCHEDULED


def asleep_for_the_interval(sweeper: Sweeper) -> bool:
    """The sweeper finished its first pass and plans the next one an interval away."""
    return sweeper._next_pass > utcnow() + dt.timedelta(seconds=INTERVAL / 2)


def test_a_sweeper_sleeps_only_until_the_earliest_scheduled_job_is_due(
    sweeper: Sweeper, subs: Submissions, member: User, load: Callable[..., Job]
) -> None:
    job = subs.submit_now("system.echo", {"n": 1}, owner_id=member.id, delay=0.5).job
    assert job.status == JobStatus.SCHEDULED
    sweeper.start()
    wait_until(lambda: promoted(load, job), timeout=5)
    queued = load(job.id)
    assert queued.status == JobStatus.QUEUED
    assert queued.run_at is not None and queued.updated_at >= queued.run_at


def test_a_job_scheduled_while_the_sweeper_sleeps_wakes_it_when_due(
    sweeper: Sweeper,
    subs: Submissions,
    member: User,
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
) -> None:
    sweeper.start()
    wait_until(lambda: asleep_for_the_interval(sweeper), timeout=5)
    job = subs.submit_now("system.echo", {"n": 2}, owner_id=member.id, delay=0.3).job
    wait_until(lambda: promoted(load, job), timeout=5)
    queued = load(job.id)
    assert queued.run_at is not None and queued.updated_at >= queued.run_at
    # The promotion commits first and publishes after: the message follows the row.
    wait_until(lambda: enqueuer.messages, timeout=5)
    assert [m.job_id for m in enqueuer.messages] == [job.id]


def test_a_wake_up_for_a_later_time_does_not_promote_a_job_early(
    sweeper: Sweeper, subs: Submissions, member: User, load: Callable[..., Job]
) -> None:
    sweeper.start()
    wait_until(lambda: asleep_for_the_interval(sweeper), timeout=5)
    later = subs.submit_now("system.echo", {"n": 3}, owner_id=member.id, delay=30).job
    sooner = subs.submit_now("system.echo", {"n": 4}, owner_id=member.id, delay=0.3).job
    wait_until(lambda: promoted(load, sooner), timeout=5)
    assert load(later.id).status == JobStatus.SCHEDULED


def test_a_job_scheduled_while_the_sweeper_reads_the_next_due_time_still_wakes_it(
    sweeper: Sweeper,
    subs: Submissions,
    member: User,
    load: Callable[..., Job],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A web thread commits a delayed job (and calls `wake_at`) just after the sweeper read
    # when the next scheduled job is due, before it decided how long to sleep.
    real_next_due = outbox.next_due
    submitted: list[Job] = []

    def next_due_then_a_submission(db: sessionmaker[Session]) -> dt.datetime | None:
        due = real_next_due(db)
        if not submitted:
            submitted.append(
                subs.submit_now("system.echo", {"n": 5}, owner_id=member.id, delay=0.3).job
            )
        return due

    monkeypatch.setattr(outbox, "next_due", next_due_then_a_submission)
    sweeper.start()
    wait_until(lambda: submitted, timeout=5)
    [job] = submitted
    # Due in 0.3 s: it must not wait for the next interval pass (60 s away).
    wait_until(lambda: promoted(load, job), timeout=5)
