"""`async def` jobs share one event loop, one outbound HTTP client and the pool's resources
across jobs (run through the lifecycle on SQLite, against a local HTTP server)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor import bootstrap
from conveyor.httpclient import SharedHttpClient
from conveyor.models import Job, JobStatus, User
from conveyor.registry import JobContext, Payload, Registry, job
from conveyor.services import jobs
from conveyor.workers.lifecycle import JobLifecycle
from tests import stack
from tests.stack import wait_until
from tests.unit.local_http import LocalHttpServer, local_http_server
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer

REGISTRY = Registry()
LEASE = dt.timedelta(seconds=30)
JOBS = 100


class Fetch(Payload):
    url: str
    n: int


@dataclass
class Seen:
    """What one run of the `tests.fetch` job saw of its process."""

    loop: asyncio.AbstractEventLoop
    http: Any
    tracker: Any
    status: int


SEEN: list[Seen] = []


class Tracker:
    """A resource built by a factory on first use; remembers the loop it was made for."""

    built = 0

    def __init__(self, container: bootstrap.Container) -> None:
        Tracker.built += 1
        self.loop = container.loop.loop
        self.closed_while_loop_ran: bool | None = None

    def close(self) -> None:
        self.closed_while_loop_ran = self.loop.is_running()


@job(queue="tests", name="tests.fetch", registry=REGISTRY)
async def fetch(payload: Fetch, ctx: JobContext) -> dict[str, int]:
    response = await ctx.http.arequest("GET", payload.url, params={"n": str(payload.n)})
    SEEN.append(
        Seen(asyncio.get_running_loop(), ctx.http, ctx.resource("tracker"), response.status)
    )
    await ctx.asleep(0)
    return {"n": payload.n, "status": response.status}


class Nap(Payload):
    seconds: float = 10.0


#: Set by `tests.nap` when its task is cancelled.
NAP_CANCELLED = threading.Event()


@job(queue="tests", name="tests.nap", time_limit=dt.timedelta(milliseconds=300), registry=REGISTRY)
async def nap(payload: Nap, ctx: JobContext) -> str:
    try:
        await ctx.asleep(payload.seconds)
    except asyncio.CancelledError:
        NAP_CANCELLED.set()
        raise
    return "rested"


@job(queue="tests", name="tests.report", registry=REGISTRY)
async def report(payload: Nap, ctx: JobContext) -> str:
    await ctx.aprogress(0.5, "half way")
    await ctx.asleep(payload.seconds)  # a cancel arrives meanwhile
    await ctx.aprogress(1.0)
    return "finished"


@job(queue="tests", name="tests.blocking", max_retries=0, registry=REGISTRY)
async def blocking(payload: Nap, ctx: JobContext) -> None:
    ctx.progress(0.5)  # would block the loop every async job of the process shares


@job(queue="tests", name="tests.fetch_sync", registry=REGISTRY)
def fetch_sync(payload: Fetch, ctx: JobContext) -> int:
    return ctx.http.request("GET", payload.url).status


@pytest.fixture
def server() -> Iterator[LocalHttpServer]:
    with local_http_server() as server:
        yield server


@pytest.fixture
def container(
    db: sessionmaker[Session], announcer: RecordingAnnouncer, enqueuer: RecordingEnqueuer
) -> Iterator[bootstrap.Container]:
    Tracker.built = 0
    SEEN.clear()
    container = bootstrap.Container(
        stack.test_settings(
            database_url="sqlite://",
            broker_url="stub://",
            redis_url=None,
            outbound_allow_hosts="127.0.0.1",  # the local server
        ),
        bootstrap.ProcessRole.WORKER,
        registry=REGISTRY,
        db=db,
        enqueuer=enqueuer,
        announcements=announcer,  # type: ignore[arg-type]
        resources={"tracker": Tracker},
    )
    yield container
    container.close()
    SEEN.clear()


@pytest.fixture
def lifecycle(container: bootstrap.Container) -> Iterator[JobLifecycle]:
    NAP_CANCELLED.clear()
    lifecycle = JobLifecycle(container, lease=LEASE)
    yield lifecycle
    lifecycle.after_worker_shutdown(None, None)  # type: ignore[arg-type]


def run(lifecycle: JobLifecycle, row: Job) -> None:
    lifecycle.run(REGISTRY.get(row.type), str(row.id))


def test_a_hundred_async_jobs_share_one_loop_one_client_and_one_resource(
    lifecycle: JobLifecycle,
    container: bootstrap.Container,
    server: LocalHttpServer,
    make_job: MakeJob,
    load: Callable[..., Job],
) -> None:
    url = server.url("/echo")
    rows = [
        make_job(job_type="tests.fetch", queue="tests", payload={"url": url, "n": i})
        for i in range(JOBS)
    ]
    for row in rows:
        run(lifecycle, row)
    assert [load(row.id).result for row in rows] == [{"n": i, "status": 200} for i in range(JOBS)]
    assert len(SEEN) == JOBS
    assert {id(seen.loop) for seen in SEEN} == {id(container.loop.loop)}
    assert {id(seen.http) for seen in SEEN} == {id(container.http)}
    assert isinstance(container.http, SharedHttpClient)
    assert {id(seen.tracker) for seen in SEEN} == {id(SEEN[0].tracker)}
    assert Tracker.built == 1
    assert SEEN[0].tracker.loop is container.loop.loop
    # One connection pool: sequential requests reuse the same kept-alive connection.
    assert len(server.peers) == JOBS
    assert len(set(server.peers)) == 1, set(server.peers)


def test_closing_the_container_closes_resources_before_the_loop_they_use(
    lifecycle: JobLifecycle,
    container: bootstrap.Container,
    server: LocalHttpServer,
    make_job: MakeJob,
) -> None:
    row = make_job(
        job_type="tests.fetch", queue="tests", payload={"url": server.url("/echo"), "n": 1}
    )
    run(lifecycle, row)
    tracker = SEEN[0].tracker
    loop = container.loop
    container.close()
    assert tracker.closed_while_loop_ran is True  # built after the loop: closed before it
    assert loop.loop.is_closed()


def test_plain_and_async_jobs_share_the_same_client(
    lifecycle: JobLifecycle,
    container: bootstrap.Container,
    server: LocalHttpServer,
    make_job: MakeJob,
    load: Callable[..., Job],
) -> None:
    url = server.url("/echo")
    plain = [
        make_job(job_type="tests.fetch_sync", queue="tests", payload={"url": url, "n": i})
        for i in range(3)
    ]
    asynchronous = make_job(job_type="tests.fetch", queue="tests", payload={"url": url, "n": 9})
    for row in [*plain, asynchronous]:
        run(lifecycle, row)
    assert [load(row.id).status for row in plain] == [JobStatus.SUCCEEDED] * 3
    assert load(asynchronous.id).result == {"n": 9, "status": 200}
    assert SEEN[0].http is container.http
    assert len(set(server.peers)) == 1


def test_an_async_job_past_its_time_limit_has_its_task_cancelled(
    lifecycle: JobLifecycle, make_job: MakeJob, load: Callable[..., Job]
) -> None:
    row = make_job(job_type="tests.nap", queue="tests", payload={"seconds": 10}, max_retries=0)
    lifecycle.before_worker_boot(None, None)  # type: ignore[arg-type]  # the heartbeat
    started = time.monotonic()
    run(lifecycle, row)
    assert time.monotonic() - started < 3
    failed = load(row.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None
    assert "in nap\n    await ctx.asleep" in failed.error.pop("traceback")  # where it waited
    assert failed.error == {"type": "TimeLimitExceeded", "message": "time limit of 0.3s exceeded"}
    assert NAP_CANCELLED.is_set()


def test_an_async_job_cancelled_while_it_sleeps_stops_promptly(
    lifecycle: JobLifecycle,
    make_job: MakeJob,
    load: Callable[..., Job],
    db: sessionmaker[Session],
    member: User,
) -> None:
    row = make_job(job_type="tests.report", queue="tests", payload={"seconds": 10})
    lifecycle.before_worker_boot(None, None)  # type: ignore[arg-type]

    def cancel_once_running() -> None:
        wait_until(lambda: load(row.id).progress == 0.5, timeout=5)
        jobs.cancel(db, RecordingAnnouncer(), row.id, member)

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    started = time.monotonic()
    run(lifecycle, row)
    canceller.join(5)
    assert time.monotonic() - started < 5
    cancelled = load(row.id)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.progress == 0.5


def test_an_async_job_cut_short_by_the_worker_stopping_records_nothing(
    lifecycle: JobLifecycle,
    container: bootstrap.Container,
    make_job: MakeJob,
    load: Callable[..., Job],
) -> None:
    # Like a plain job whose thread dies with its process: no failure is charged to the job;
    # its lease runs out and the reconciler takes it back as a lost worker.
    row = make_job(job_type="tests.report", queue="tests", payload={"seconds": 30}, max_retries=0)
    worker = threading.Thread(target=run, args=(lifecycle, row))
    worker.start()
    wait_until(lambda: load(row.id).progress == 0.5, timeout=5)
    container.loop.close()  # what closing the container does when the worker stops
    worker.join(10)
    assert not worker.is_alive()
    interrupted = load(row.id)
    assert (interrupted.status, interrupted.attempts) == (JobStatus.RUNNING, 1)
    assert interrupted.error is None


def test_a_blocking_ctx_call_in_an_async_job_is_refused(
    lifecycle: JobLifecycle, make_job: MakeJob, load: Callable[..., Job]
) -> None:
    row = make_job(job_type="tests.blocking", queue="tests", payload={}, max_retries=0)
    run(lifecycle, row)
    failed = load(row.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and "await ctx.aprogress" in failed.error["message"]
