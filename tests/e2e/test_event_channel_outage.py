"""Requests that wait on a job while Redis, the event channel, is down: they read the row at a
short interval instead, and subscribe again once Redis is back."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.conftest import member_token, private_platform_env
from tests.e2e.processes import Api, Processes
from tests.servers import PrivatePostgres, PrivateRedis
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

PREFIX = "conveyor-e2e"
#: How late after the job finished a wait may answer while the channel is down (the fallback
#: reads the row every second).
LATE = dt.timedelta(seconds=3)


@pytest.fixture
def broker_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A second private Redis, for the broker: the event channel goes down alone."""
    with PrivateRedis(tmp_path / "broker") as server:
        yield server


@pytest.fixture
def env(
    private_pg: PrivatePostgres, private_redis: PrivateRedis, broker_redis: PrivateRedis
) -> dict[str, str]:
    return private_platform_env(
        private_pg, broker_url=broker_redis.url, redis_url=private_redis.url, prefix=PREFIX
    )


@pytest.fixture
def api(env: dict[str, str], procs: Processes, tmp_path: Path) -> Api:
    """`conveyor web` and a `system` worker on the private servers, and a member's client."""
    token = member_token(env, tmp_path)
    _, api = procs.web(env)
    procs.worker(env)
    return api.with_token(token)


def subscribers(server: PrivateRedis, job_id: str) -> int:
    """How many connections listen on the job's channel (0 while Redis is down)."""
    client = redis.Redis.from_url(server.url, socket_connect_timeout=1)
    try:
        [(_, count)] = client.pubsub_numsub(f"{PREFIX}:job:{job_id}")
        return int(count)
    except redis.ConnectionError:
        return 0
    finally:
        client.close()


def wait_in_background(pool: ThreadPoolExecutor, api: Api, job_id: str) -> Future[Any]:
    """`GET /v1/jobs/{id}?wait=20&until=finished` in a thread: (answer, when it came)."""

    def get() -> tuple[Any, dt.datetime]:
        job = api.get(job_id, wait=20, until="finished")
        return job, dt.datetime.now(dt.UTC)

    return pool.submit(get)


def running(api: Api, job_id: str) -> bool:
    return api.get(job_id)["status"] == "running"


def assert_answered_soon_after_it_finished(answer: Any, answered_at: dt.datetime) -> None:
    assert answer["status"] == "succeeded", answer
    finished_at = dt.datetime.fromisoformat(answer["finished_at"])
    assert answered_at - finished_at < LATE, (finished_at, answered_at)


def test_a_wait_spanning_a_redis_outage_answers_soon_after_the_job_finishes(
    api: Api, private_redis: PrivateRedis
) -> None:
    job = api.submit("system.sleep", {"seconds": 3, "steps": 3})
    wait_until(lambda: running(api, job["id"]), timeout=20, interval=0.05)
    with ThreadPoolExecutor(1) as pool:
        waiting = wait_in_background(pool, api, job["id"])
        wait_until(lambda: subscribers(private_redis, job["id"]) == 1, timeout=10, interval=0.05)
        private_redis.stop()  # the job finishes while Redis is down: nobody announces it
        try:
            answer, answered_at = waiting.result(timeout=40)
        finally:
            private_redis.resume()
    assert_answered_soon_after_it_finished(answer, answered_at)


def test_a_wait_started_while_redis_is_down_is_answered_and_resubscribes_when_it_is_back(
    api: Api, private_redis: PrivateRedis
) -> None:
    warm = api.submit("system.echo", {}, expect=200, Prefer="wait=10")  # the channel was up
    assert warm["status"] == "succeeded"
    private_redis.stop()
    try:
        short = api.submit("system.sleep", {"seconds": 1, "steps": 1}, expect=200, Prefer="wait=20")
        assert short["status"] == "succeeded"  # answered, not left to its timeout of 20 s
        job = api.submit("system.sleep", {"seconds": 5, "steps": 5})
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            waiting = wait_in_background(pool, api, job["id"])
            wait_until(lambda: running(api, job["id"]), timeout=20, interval=0.05)
            private_redis.resume()
            # The waiting request's job channel is subscribed again while the job still runs.
            wait_until(lambda: subscribers(private_redis, job["id"]) == 1, timeout=4, interval=0.05)
            assert api.get(job["id"])["status"] == "running"
            answer, answered_at = waiting.result(timeout=40)
    finally:
        if private_redis.pid is None:
            private_redis.resume()
    assert time.monotonic() - started < 15
    assert_answered_soon_after_it_finished(answer, answered_at)
