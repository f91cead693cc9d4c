"""Group commit of submissions: the batcher's thread writes what accumulated meanwhile."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.background.batcher import SubmitBatcher
from conveyor.ids import uuid7
from conveyor.models import Job, User
from conveyor.services.submissions import NewJob, write_many


class Commits:
    """Counts commits on a sessionmaker; can hold the first one until released."""

    def __init__(self, db: sessionmaker[Session], *, hold_first: bool = False) -> None:
        self.db = db
        self.count = 0
        self.holding = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        event.listen(db, "before_commit", self._before)
        event.listen(db, "after_commit", self._after)

    def _before(self, session: Session) -> None:
        if self.count == 0:
            self.holding.set()
            self.release.wait(timeout=5)

    def _after(self, session: Session) -> None:
        self.count += 1

    def remove(self) -> None:
        event.remove(self.db, "before_commit", self._before)
        event.remove(self.db, "after_commit", self._after)


@pytest.fixture
def batcher(db: sessionmaker[Session]) -> Iterator[SubmitBatcher]:
    batcher = SubmitBatcher(partial(write_many, db))
    yield batcher
    batcher.close()


@pytest.fixture
def commits(db: sessionmaker[Session]) -> Iterator[Callable[..., Commits]]:
    made: list[Commits] = []

    def make(**kwargs: Any) -> Commits:
        made.append(Commits(db, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.release.set()
        c.remove()


def _new(owner: User, i: int = 0) -> NewJob:
    return NewJob("system.echo", "system", {"i": i}, 0, owner.id)


def _jobs(db: sessionmaker[Session]) -> int:
    with db() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_a_submission_comes_back_as_the_committed_job(
    db: sessionmaker[Session], member: User, batcher: SubmitBatcher, load: Callable[..., Job]
) -> None:
    job = batcher.write(_new(member, 7)).result(timeout=5).job
    assert job.payload == {"i": 7}
    assert job.owner_id == member.id
    assert load(job.id).status == "queued"


def test_submissions_arriving_during_a_commit_share_the_next_one(
    db: sessionmaker[Session],
    member: User,
    batcher: SubmitBatcher,
    commits: Callable[..., Commits],
) -> None:
    counter = commits(hold_first=True)
    first = batcher.write(_new(member))
    assert counter.holding.wait(timeout=5)
    rest = [batcher.write(_new(member, i)) for i in range(1, 21)]
    counter.release.set()
    results = [f.result(timeout=5).job for f in [first, *rest]]
    assert [j.payload["i"] for j in results] == list(range(21))
    assert len({j.id for j in results}) == 21
    assert counter.count == 2
    assert _jobs(db) == 21


def test_batches_are_at_most_max_batch_jobs(
    db: sessionmaker[Session], member: User, commits: Callable[..., Commits]
) -> None:
    batcher = SubmitBatcher(partial(write_many, db), max_batch=3)
    try:
        counter = commits(hold_first=True)
        first = batcher.write(_new(member))
        assert counter.holding.wait(timeout=5)
        rest = [batcher.write(_new(member, i)) for i in range(1, 8)]
        counter.release.set()
        for future in [first, *rest]:
            future.result(timeout=5)
    finally:
        batcher.close()
    assert counter.count == 1 + 3  # the first alone, then 7 jobs in batches of 3, 3 and 1


def test_a_failed_write_fails_the_submission(
    db: sessionmaker[Session], batcher: SubmitBatcher
) -> None:
    stranger = NewJob("system.echo", "system", {}, 0, uuid7())  # no such user
    future = batcher.write(stranger)
    with pytest.raises(Exception, match="FOREIGN KEY"):
        future.result(timeout=5)
    assert _jobs(db) == 0


def test_the_batcher_keeps_working_after_a_failed_write(
    db: sessionmaker[Session], member: User, batcher: SubmitBatcher
) -> None:
    with pytest.raises(Exception, match="FOREIGN KEY"):
        batcher.write(NewJob("system.echo", "system", {}, 0, uuid7())).result(timeout=5)
    assert batcher.write(_new(member)).result(timeout=5).job.owner_id == member.id


def test_a_bad_submission_does_not_fail_the_others_in_its_batch(
    db: sessionmaker[Session],
    member: User,
    batcher: SubmitBatcher,
    commits: Callable[..., Commits],
) -> None:
    counter = commits(hold_first=True)
    first = batcher.write(_new(member))
    assert counter.holding.wait(timeout=5)
    good: list[Future[Job]] = [batcher.write(_new(member, 1))]
    bad = batcher.write(NewJob("system.echo", "system", {}, 0, uuid7()))
    good.append(batcher.write(_new(member, 2)))
    counter.release.set()
    first.result(timeout=5)
    with pytest.raises(Exception, match="FOREIGN KEY"):
        bad.result(timeout=5)
    assert [f.result(timeout=5).job.payload for f in good] == [{"i": 1}, {"i": 2}]


def test_close_writes_what_is_queued(db: sessionmaker[Session], member: User) -> None:
    batcher = SubmitBatcher(partial(write_many, db))
    futures = [batcher.write(_new(member, i)) for i in range(10)]
    batcher.close()
    assert all(f.done() for f in futures)
    assert sorted(f.result().job.payload["i"] for f in futures) == list(range(10))
    assert _jobs(db) == 10


def test_a_cancelled_request_does_not_stop_the_batcher(
    db: sessionmaker[Session],
    member: User,
    batcher: SubmitBatcher,
    commits: Callable[..., Commits],
) -> None:
    # aiohttp cancels a handler whose client left (or at shutdown); its future is cancelled
    # while the batch is being written.
    counter = commits(hold_first=True)
    first = batcher.write(_new(member))
    assert counter.holding.wait(timeout=5)
    gone = batcher.write(_new(member, 1))
    assert gone.cancel()
    counter.release.set()
    assert first.result(timeout=5).job.payload == {"i": 0}
    after = batcher.write(_new(member, 2)).result(timeout=5).job  # the thread still serves
    assert after.payload == {"i": 2}
    assert _jobs(db) == 3  # the cancelled request's job was written all the same
