"""Shared by the service and worker tests: a migrated SQLite file, users, a job factory,
row helpers, and fakes at the broker and announcer boundaries.

The conftest.py of each test package imports the fixtures it uses from here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import make_engine, make_sessionmaker, transaction
from conveyor.models import Job, JobEvent, Role, User
from conveyor.models.job import jobs_t
from conveyor.services import submissions
from conveyor.services.jobs import JobMessage
from conveyor.services.submissions import NewJob
from conveyor.services.users import create_user


class RecordingAnnouncer:
    """Records every (job_id, status) announced."""

    def __init__(self) -> None:
        self.announced: list[tuple[uuid.UUID, str]] = []

    def announce(self, job_id: uuid.UUID, status: str) -> None:
        self.announced.append((job_id, str(status)))


class RecordingEnqueuer:
    """A broker stand-in that records the messages; `fail` makes it raise like a broker
    that cannot be reached. `restart` plays a broker that lost its data (a token until
    handled), `held` the jobs whose messages it still holds."""

    def __init__(self) -> None:
        self.messages: list[JobMessage] = []
        self.fail = False
        self.depth: dict[str, int] = {}  # messages waiting per queue, as the broker says
        self.restart: str | None = None
        self.held: dict[str, set[uuid.UUID]] = {}
        self.restart_checks = 0

    def publish(self, messages: Sequence[JobMessage]) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.messages.extend(messages)

    def publish_soon(self, message: JobMessage) -> None:
        self.publish([message])

    def waiting(self, queue: str) -> int | None:
        return self.depth.get(queue)

    def take_confirmed(self) -> list[uuid.UUID]:
        return []

    def broker_restarted(self) -> str | None:
        self.restart_checks += 1
        return self.restart

    def held_jobs(self, queue: str) -> set[uuid.UUID]:
        return set(self.held.get(queue, ()))

    def restart_handled(self, token: str) -> None:
        if token == self.restart:
            self.restart = None


#: SQLite's busy timeout in these tests: a write that waits on a lock this long is a bug
#: (the engine's own 30 s would only make such a test slow).
BUSY_TIMEOUT_MS = 500


def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


@pytest.fixture
def db(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(sqlite_url, pool_size=5)
    event.listen(engine, "connect", _short_busy_timeout)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def member(db: sessionmaker[Session]) -> User:
    return create_user(db, "member@example.com", Role.MEMBER)


@pytest.fixture
def other(db: sessionmaker[Session]) -> User:
    return create_user(db, "other@example.com", Role.MEMBER)


@pytest.fixture
def admin(db: sessionmaker[Session]) -> User:
    return create_user(db, "admin@example.com", Role.ADMIN)


@pytest.fixture
def announcer() -> RecordingAnnouncer:
    return RecordingAnnouncer()


@pytest.fixture
def enqueuer() -> RecordingEnqueuer:
    return RecordingEnqueuer()


MakeJob = Callable[..., Job]


@pytest.fixture
def make_job(db: sessionmaker[Session], member: User) -> MakeJob:
    """Submit a job (by default: system.echo of `member`, three retries)."""

    def make(
        owner: User | None = None,
        *,
        job_type: str = "system.echo",
        queue: str = "system",
        payload: dict[str, Any] | None = None,
        max_retries: int = 3,
        key: str | None = None,
    ) -> Job:
        new = NewJob(
            job_type=job_type,
            queue=queue,
            payload=payload if payload is not None else {"n": 1},
            max_retries=max_retries,
            owner_id=(owner or member).id,
            idempotency_key=key,
        )
        job, created = submissions.write(db, new)
        assert created
        return job

    return make


@pytest.fixture
def set_job(db: sessionmaker[Session]) -> Callable[..., None]:
    """Overwrite columns of a job row (to age it, or to put it in a given state)."""

    def set_(job_id: uuid.UUID, **values: Any) -> None:
        with transaction(db) as session:
            session.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(**values))

    return set_


@pytest.fixture
def load(db: sessionmaker[Session]) -> Callable[[uuid.UUID], Job]:
    """The job row as it is now."""

    def load_(job_id: uuid.UUID) -> Job:
        with db() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    return load_


@pytest.fixture
def history(db: sessionmaker[Session]) -> Callable[[uuid.UUID], list[tuple[str, str, int]]]:
    """The job's events as (kind, status, attempt), oldest first."""

    def history_(job_id: uuid.UUID) -> list[tuple[str, str, int]]:
        with db() as session:
            rows = session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
            return [(e.kind, e.status, e.attempt) for e in rows]

    return history_
