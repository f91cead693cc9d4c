"""`conveyor.client` against a real `conveyor web` and a system worker: every operation, sync
and async, its typed errors, and its retries through a proxy that drops connections."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from conveyor.client import (
    ApiError,
    AsyncClient,
    Client,
    ConflictError,
    Event,
    InvalidRequestError,
    Job,
    JobStatus,
    NotFoundError,
    ServiceUnavailableError,
    TransportError,
    UnauthorizedError,
    WaitTimeoutError,
)
from conveyor.db import make_engine, make_sessionmaker
from conveyor.models import Role
from conveyor.services.auth import TokenConfig, issue_token
from conveyor.services.users import create_user
from tests import stack
from tests.conftest import REDIS_URL
from tests.e2e.conftest import _delete_queues
from tests.e2e.processes import FAST, SECRET_KEY, Processes, environment, free_port
from tests.e2e.proxy import Answer, CutWhen, DropAnswer, FaultyProxy, problem_answer

pytestmark = pytest.mark.e2e

#: Lower than the client's long-poll, so `wait()` must find the server's cap.
MAX_WAIT_SECONDS = 10


@dataclass
class Platform:
    url: str
    port: int
    database_url: str

    def user(self, role: Role = Role.MEMBER) -> str:
        """A new user's bearer token."""
        engine = make_engine(self.database_url, pool_size=1)
        try:
            user = create_user(make_sessionmaker(engine), f"{uuid.uuid4().hex}@example.com", role)
        finally:
            engine.dispose()
        settings = stack.test_settings(secret_key=SECRET_KEY, database_url=self.database_url)
        return issue_token(TokenConfig.of(settings), user.id)


@pytest.fixture(scope="module")
def platform(
    database_url: str,
    rabbitmq_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    """One `conveyor web` and one system worker for the module (each test has its own user)."""
    engine = make_engine(database_url, pool_size=1)
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE job_events, jobs, users CASCADE"))
    engine.dispose()
    _delete_queues(rabbitmq_url)
    env = environment(
        {
            **FAST,
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_BROKER_URL": rabbitmq_url,
            "CONVEYOR_BROKER_NAMESPACE": redis_prefix,
            "CONVEYOR_REDIS_URL": REDIS_URL,
            "CONVEYOR_REDIS_PREFIX": redis_prefix,
            "CONVEYOR_MAX_WAIT_SECONDS": str(MAX_WAIT_SECONDS),
        }
    )
    processes = Processes(Path(tmp_path_factory.mktemp("client")))
    try:
        _, api = processes.web(env)
        processes.worker(env)
        yield Platform(api.base_url, int(api.base_url.rsplit(":", 1)[1]), database_url)
    except BaseException:
        print(processes.report())
        raise
    finally:
        processes.stop_all()


@pytest.fixture
def token(platform: Platform) -> str:
    return platform.user()


@pytest.fixture
def client(platform: Platform, token: str) -> Iterator[Client]:
    with Client(platform.url, token, timeout=10, backoff=0.05) as c:
        yield c


def test_submit_get_and_wait_give_typed_jobs(client: Client) -> None:
    echoed = client.submit("system.echo", {"hello": "world"}, wait=5)
    assert isinstance(echoed, Job)
    assert echoed.status is JobStatus.SUCCEEDED and echoed.finished
    assert echoed.result == {"hello": "world"} and echoed.payload == {"hello": "world"}
    assert isinstance(echoed.created_at, dt.datetime) and echoed.created_at.tzinfo is not None
    assert echoed.url == f"/v1/jobs/{echoed.id}"
    assert echoed.idempotency_key  # made by the client, so its own retries are safe
    assert client.get(echoed.id) == echoed

    sleeper = client.submit("system.sleep", {"seconds": 1, "steps": 2})
    assert sleeper.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    # The client asks for a 30 s long-poll; this server allows 10: it follows the cap.
    done = client.wait(sleeper, timeout=30)
    assert (done.status, done.result) == (JobStatus.SUCCEEDED, {"slept": 1.0})
    assert client.long_poll_seconds <= MAX_WAIT_SECONDS * 2


def test_delayed_submissions_and_a_wait_that_runs_out(client: Client) -> None:
    later = client.submit("system.echo", {"n": 1}, delay_seconds=600)
    assert later.status is JobStatus.SCHEDULED and later.next_attempt_at is not None
    at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    planned = client.submit("system.echo", {"n": 2}, run_at=at)
    assert planned.status is JobStatus.SCHEDULED and planned.run_at == at

    with pytest.raises(ValueError, match="timezone-aware"):
        client.submit("system.echo", {}, run_at=dt.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="not both"):
        client.submit("system.echo", {}, run_at=at, delay_seconds=5)

    with pytest.raises(WaitTimeoutError) as raised:
        client.wait(later, timeout=0.5)
    assert raised.value.job.id == later.id
    assert raised.value.job.status is JobStatus.SCHEDULED

    cancelled = client.cancel(later)
    assert cancelled.status is JobStatus.CANCELLED
    assert client.cancel(later).status is JobStatus.CANCELLED  # again: nothing changes


def test_list_follows_the_cursors(client: Client) -> None:
    submitted = [client.submit("system.echo", {"n": n}, delay_seconds=600) for n in range(5)]
    newest_first = [job.id for job in reversed(submitted)]

    assert [job.id for job in client.list(limit=2)] == newest_first
    first = client.list_page(limit=2)
    assert [job.id for job in first.items] == newest_first[:2]
    assert first.next_cursor is not None and first.next_url is not None
    assert first.next_cursor in first.next_url
    assert first.items[0].payload is None  # left out of lists unless included
    second = client.list_page(limit=2, cursor=first.next_cursor)
    assert [job.id for job in second.items] == newest_first[2:4]
    last = client.list_page(limit=10, cursor=second.next_cursor)
    assert [job.id for job in last.items] == newest_first[4:] and last.next_cursor is None

    with_payload = list(client.list(status=["scheduled"], include="payload", limit=3))
    assert [job.payload for job in with_payload] == [{"n": n} for n in (4, 3, 2, 1, 0)]
    assert list(client.list(status="succeeded")) == []
    assert list(client.list(type="system.sleep")) == []


def test_cancel_a_running_job_and_a_finished_one(client: Client) -> None:
    job = client.submit("system.sleep", {"seconds": 30, "steps": 30})
    for event in client.events(job):
        if event.status == "running":
            break
    asked = client.cancel(job)
    assert asked.cancel_requested
    assert client.wait(job, timeout=20).status is JobStatus.CANCELLED

    done = client.submit("system.echo", {}, wait=5)
    with pytest.raises(ConflictError) as raised:
        client.cancel(done)
    assert raised.value.status == 409


def test_events_follow_the_job_and_resume_after_an_id(client: Client) -> None:
    job = client.submit("system.sleep", {"seconds": 1, "steps": 4})
    events = list(client.events(job))
    assert all(isinstance(event, Event) for event in events)
    assert (events[0].kind, events[0].status) == ("status", JobStatus.QUEUED)
    assert (events[-1].kind, events[-1].status) == ("status", JobStatus.SUCCEEDED)
    assert events[-1].final and not any(event.final for event in events[:-1])
    assert [e.kind for e in events].count("progress") == 4
    ids = [event.id for event in events]
    assert ids == sorted(set(ids))

    assert list(client.events(job, last_event_id=ids[2])) == events[3:]
    # After the final event there is nothing more: the stream ends (it is not reopened).
    assert list(client.events(job.id, last_event_id=ids[-1])) == []


def test_errors_are_typed_from_the_problem_documents(
    client: Client, platform: Platform, token: str
) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        client.submit("system.sleep", {"seconds": -1, "x": 1})
    error = raised.value
    assert error.status == 422 and error.title == "Unprocessable content"
    assert set(error.fields) == {"payload.seconds", "payload.x"}
    assert error.request_id
    assert "payload.seconds" in str(error)

    with pytest.raises(InvalidRequestError) as raised:
        client.submit("no.such.type", {})
    assert raised.value.status == 422

    with pytest.raises(NotFoundError):
        client.get(uuid.uuid4())
    mine = client.submit("system.echo", {}, delay_seconds=600)
    with Client(platform.url, platform.user()) as other, pytest.raises(NotFoundError):
        other.get(mine)  # another member's job is not there for them

    with Client(platform.url, "not-a-token") as stranger, pytest.raises(UnauthorizedError) as un:
        stranger.get(mine)
    assert un.value.status == 401


def test_a_submission_whose_answer_was_lost_is_sent_again_and_not_run_twice(
    platform: Platform, token: str
) -> None:
    with (
        FaultyProxy(platform.port, DropAnswer()) as proxy,
        Client(proxy.url, token, backoff=0.05) as client,
    ):
        job = client.submit("system.echo", {"once": True}, delay_seconds=600)
        with (
            FaultyProxy(platform.port, DropAnswer()) as second,
            Client(second.url, token, backoff=0.05) as keyed,
        ):
            chosen = keyed.submit("system.echo", {"twice": False}, idempotency_key="order-1")
    assert len(proxy.requests) == 2  # the dropped one and the one sent again
    keys = [_header(sent, "Idempotency-Key") for sent in proxy.requests]
    assert keys[0] and keys[0] == keys[1] == job.idempotency_key
    assert [_header(sent, "Idempotency-Key") for sent in second.requests] == ["order-1"] * 2
    assert chosen.idempotency_key == "order-1"
    with Client(platform.url, token) as direct:
        assert sorted(j.id for j in direct.list()) == sorted([job.id, chosen.id])


def test_unavailable_answers_are_retried_then_raised(platform: Platform, token: str) -> None:
    unavailable = Answer(problem_answer(503, "Service unavailable", retry_after=0))
    with (
        FaultyProxy(platform.port, unavailable) as proxy,
        Client(proxy.url, token, backoff=0.05) as client,
    ):
        job = client.submit("system.echo", {"n": 1}, delay_seconds=600)
        assert job.status is JobStatus.SCHEDULED
    assert len(proxy.requests) == 2

    with (
        FaultyProxy(platform.port, unavailable, unavailable, unavailable) as proxy,
        Client(proxy.url, token, retries=2, backoff=0.05) as client,
        pytest.raises(ServiceUnavailableError) as raised,
    ):
        client.get(job)
    assert (raised.value.status, raised.value.retry_after) == (503, 0)
    assert len(proxy.requests) == 3

    with (
        Client(f"http://127.0.0.1:{free_port()}", token, retries=2, backoff=0.01) as client,
        pytest.raises(TransportError, match="3 attempts"),
    ):
        client.get(job)


def test_a_dropped_event_stream_resumes_after_the_last_event(
    platform: Platform, token: str, client: Client
) -> None:
    job = client.submit("system.sleep", {"seconds": 2, "steps": 4})
    # Cut the first stream once it has passed on a status and a progress event.
    cut = CutWhen(lambda sent: b"event: progress" in sent)
    with (
        FaultyProxy(platform.port, cut) as proxy,
        Client(proxy.url, token, backoff=0.05) as through,
    ):
        events = list(through.events(job))
    assert len(proxy.requests) >= 2
    assert _header(proxy.requests[0], "Last-Event-ID") is None
    resumed_after = _header(proxy.requests[1], "Last-Event-ID")
    assert resumed_after is not None and int(resumed_after) >= events[1].id
    assert events == list(client.events(job))  # every event once, in order
    assert events[-1].status is JobStatus.SUCCEEDED


def test_retry_runs_a_cancelled_job_again(client: Client) -> None:
    job = client.submit("system.echo", {"again": True}, delay_seconds=600)
    client.cancel(job)
    retried = _retry_or_skip(client, job)
    assert retried.id == job.id and retried.status is not JobStatus.CANCELLED
    done = client.wait(job, timeout=20)
    assert done.status is JobStatus.SUCCEEDED
    with pytest.raises(ConflictError):
        client.retry(job)


def test_a_retry_whose_answer_was_lost_returns_the_retried_job(
    platform: Platform, token: str, client: Client
) -> None:
    job = client.submit("system.echo", {"again": True}, delay_seconds=600)
    client.cancel(job)
    with (
        FaultyProxy(platform.port, DropAnswer()) as proxy,
        Client(proxy.url, token, backoff=0.05) as through,
    ):
        retried = _retry_or_skip(through, job)
    # The first retry went through, the second met a 409: the job is read and returned.
    assert len(proxy.requests) >= 2
    assert retried.id == job.id and retried.status is not JobStatus.CANCELLED
    assert client.wait(job, timeout=20).status is JobStatus.SUCCEEDED


async def test_the_async_client_does_the_same(platform: Platform, token: str) -> None:
    async with AsyncClient(platform.url, token, timeout=10, backoff=0.05) as client:
        echoed = await client.submit("system.echo", {"a": 1}, wait=5)
        assert echoed.status is JobStatus.SUCCEEDED and echoed.result == {"a": 1}
        assert await client.get(echoed) == echoed

        sleeper = await client.submit("system.sleep", {"seconds": 1, "steps": 2})
        events = [event async for event in client.events(sleeper)]
        assert events[0].status is JobStatus.QUEUED and events[-1].final
        resumed = [e async for e in client.events(sleeper, last_event_id=events[0].id)]
        assert resumed == events[1:]
        assert (await client.wait(sleeper, timeout=30)).status is JobStatus.SUCCEEDED

        later = await client.submit("system.echo", {}, delay_seconds=600)
        with pytest.raises(WaitTimeoutError):
            await client.wait(later, timeout=0.5)
        assert (await client.cancel(later)).status is JobStatus.CANCELLED
        with pytest.raises(ConflictError):
            await client.cancel(echoed)

        listed = [job.id async for job in client.list(limit=1)]
        assert listed == [later.id, sleeper.id, echoed.id]
        page = await client.list_page(limit=2, status="succeeded")
        assert [job.id for job in page.items] == [sleeper.id, echoed.id]
        assert page.next_cursor is None

        with pytest.raises(InvalidRequestError) as raised:
            await client.submit("system.sleep", {"seconds": "long"})
        assert "payload.seconds" in raised.value.fields
        with pytest.raises(NotFoundError):
            await client.get(str(uuid.uuid4()))
        types = {job_type.name for job_type in await client.job_types()}
        assert {"system.echo", "system.sleep", "system.fail"} <= types
    async with AsyncClient(platform.url, "bad") as stranger:
        with pytest.raises(UnauthorizedError):
            await stranger.get(echoed)


async def test_the_async_client_retries_a_lost_submission_and_a_cut_stream(
    platform: Platform, token: str
) -> None:
    cut = CutWhen(lambda sent: b"event: progress" in sent)
    with FaultyProxy(platform.port, DropAnswer()) as dropping:
        async with AsyncClient(dropping.url, token, backoff=0.05) as client:
            job = await client.submit("system.sleep", {"seconds": 2, "steps": 4})
    with FaultyProxy(platform.port, cut) as cutting:
        async with AsyncClient(cutting.url, token, backoff=0.05) as client:
            events = [event async for event in client.events(job)]
    assert len(dropping.requests) == 2
    assert len(cutting.requests) >= 2, (events, cutting.requests)
    resumed_after = _header(cutting.requests[1], "Last-Event-ID")
    assert resumed_after is not None and int(resumed_after) >= events[1].id
    async with AsyncClient(platform.url, token) as direct:
        assert [j.id async for j in direct.list()] == [job.id]
        assert events == [event async for event in direct.events(job)]
    assert events[-1].status is JobStatus.SUCCEEDED


def _retry_or_skip(client: Client, job: Job) -> Job:
    """`client.retry(job)`; the test is skipped on a server without the retry route."""
    try:
        return client.retry(job)
    except ApiError as exc:
        if exc.status == 405 or (exc.status == 404 and "no route" in exc.detail):
            pytest.skip("this server has no POST /v1/jobs/{id}/retry")
        raise


def _header(sent: bytes, name: str) -> str | None:
    head = bytes(sent).partition(b"\r\n\r\n")[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None
