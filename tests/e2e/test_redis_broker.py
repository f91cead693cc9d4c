"""The Redis broker under faults, with real processes on a private Redis and PostgreSQL: the
jobs a killed worker had fetched, and jobs submitted across a Redis restart, all run within
the bounds docs/reliability.md states (seconds), not when some worker happens to stop."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import Job
from conveyor.models.base import utcnow
from tests.e2e.conftest import member_token, private_platform_env
from tests.e2e.processes import BIN, Api, Process, Processes
from tests.servers import PrivatePostgres, PrivateRedis
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

PREFIX = "conveyor-e2e"
#: docs/reliability.md, with the default settings: a dead worker's fetched messages are back
#: in their queue within the heartbeat timeout plus one maintenance interval (10 s + 1 s)...
DEAD_WORKER_BOUND = 11.0
#: ...and a message stranded by a lost connection within 5 s of Redis answering again.
RECONNECT_BOUND = 5.0
#: How long Redis stays down: as a real restart, which loads its append-only file, and long
#: enough for every consumer to try it (each polls at least once a second) and see it gone.
#: A restart that no consumer sees loses no message.
OUTAGE_SECONDS = 2.5


@pytest.fixture
def env(private_pg: PrivatePostgres, private_redis: PrivateRedis) -> dict[str, str]:
    """The platform on the test's own PostgreSQL and Redis (broker and announcements)."""
    return private_platform_env(
        private_pg, broker_url=private_redis.url, redis_url=private_redis.url, prefix=PREFIX
    )


@pytest.fixture
def api(env: dict[str, str], procs: Processes, tmp_path: Path) -> Api:
    """`conveyor web` (the sweeper included), and a member's token."""
    token = member_token(env, tmp_path, "redis@example.com")
    _, api = procs.web(env)
    return api.with_token(token)


@pytest.fixture
def broker_redis(private_redis: PrivateRedis) -> Iterator[redis.Redis[bytes]]:
    client = redis.Redis.from_url(private_redis.url)
    yield client
    client.close()


def start_worker(procs: Processes, env: dict[str, str], threads: int) -> Process:
    """One worker process of `threads` threads; Dramatiq prefetches twice as many messages."""
    argv = [str(BIN / "dramatiq"), "conveyor.workers.system", "--processes", "1"]
    worker = procs.start("worker", [*argv, "--threads", str(threads)], env)
    worker.wait_for_output(r"Worker process is ready for action", timeout=30)
    return worker


def fetched_jobs(client: redis.Redis[bytes], queue: str) -> set[uuid.UUID]:
    """The jobs whose messages workers fetched from `queue` and have not acknowledged."""
    jobs = set()
    for acks in client.keys(f"{PREFIX}:__acks__.*.{queue}"):
        ids = list(client.smembers(acks))
        for data in client.hmget(f"{PREFIX}:{queue}.msgs", ids) if ids else []:
            if data is not None:
                jobs.add(uuid.UUID(json.loads(data)["args"][0]))
    return jobs


def rows(env_db: sessionmaker[Session], ids: list[str]) -> list[Job]:
    with env_db() as session:
        return list(session.scalars(select(Job).where(Job.id.in_([uuid.UUID(i) for i in ids]))))


def wait_all_succeeded(env_db: sessionmaker[Session], ids: list[str], within: float) -> list[Job]:
    try:
        wait_until(
            lambda: all(job.status == "succeeded" for job in rows(env_db, ids)),
            timeout=within,
            interval=0.2,
        )
    except AssertionError:
        waiting = [(str(j.id), j.type, j.status, j.attempts) for j in rows(env_db, ids)]
        waiting = [job for job in waiting if job[2] != "succeeded"]
        raise AssertionError(
            f"{len(waiting)} of {len(ids)} jobs not done after {within:.0f}s: {waiting[:10]}"
        ) from None
    return rows(env_db, ids)


def test_jobs_a_killed_worker_had_fetched_run_within_the_bound(
    private_redis: PrivateRedis, env: dict[str, str], procs: Processes, api: Api,
    env_db: sessionmaker[Session], broker_redis: redis.Redis[bytes],
) -> None:  # fmt: skip
    first = start_worker(procs, env, threads=2)
    ids = [api.submit("system.sleep", {"seconds": 2, "steps": 4})["id"] for _ in range(8)]

    def two_running_two_prefetched() -> set[uuid.UUID] | None:
        status = {job.id: job.status for job in rows(env_db, ids)}
        fetched = fetched_jobs(broker_redis, "system")
        prefetched = {job_id for job_id in fetched if status[job_id] == "queued"}
        running = [job_id for job_id, s in status.items() if s == "running"]
        return prefetched if len(running) == 2 and len(prefetched) == 2 else None

    prefetched = wait_until(two_running_two_prefetched, timeout=20, interval=0.05)
    assert first.kill() == -9  # two jobs running, two more fetched and waiting in the worker
    killed = utcnow()
    start_worker(procs, env, threads=2)

    # Eight jobs of 2 s on two threads; the two that were running come back with their
    # lease (2 s here), the two prefetched ones with their dead worker's ack set.
    done = wait_all_succeeded(env_db, ids, within=DEAD_WORKER_BOUND + 15)
    for job in done:
        assert job.attempts == (2 if job.worker_losses else 1), job
    for job in done:
        if job.id in prefetched:
            assert job.started_at is not None
            # Back in the queue within the bound, then run by an idle thread (the other six
            # jobs are done by then) at its next poll.
            late = (job.started_at - killed).total_seconds()
            assert late <= DEAD_WORKER_BOUND + 2, (job.id, late)


class Submitter(threading.Thread):
    """Submits a steady stream of jobs until stopped: echoes, and failures that are retried
    once through the broker's delay queue."""

    def __init__(self, api: Api, per_second: float) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.pause = 1.0 / per_second
        self.submitted: list[str] = []
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.wait(self.pause):
            n += 1
            try:
                if n % 2:
                    job = self.api.submit("system.echo", {"n": n})
                else:
                    job = self.api.submit("system.fail", {"failures": 1})
            except BaseException as exc:
                self.errors.append(exc)
                return
            self.submitted.append(job["id"])

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


@pytest.mark.parametrize("hard", [False, True], ids=["graceful", "sigkill"])
def test_jobs_submitted_across_a_redis_restart_all_run_within_the_bound(
    private_redis: PrivateRedis, env: dict[str, str], procs: Processes, api: Api,
    env_db: sessionmaker[Session], broker_redis: redis.Redis[bytes], hard: bool,
) -> None:  # fmt: skip
    for _ in range(2):
        start_worker(procs, env, threads=4)
    submitter = Submitter(api, per_second=20)
    submitter.start()
    try:
        wait_until(lambda: len(submitter.submitted) >= 40, timeout=20)
        # Stop Redis while workers hold retries in memory, waiting for their time.
        wait_until(lambda: fetched_jobs(broker_redis, "system.DQ"), timeout=10, interval=0.005)
        private_redis.kill() if hard else private_redis.stop()
        down_at = time.monotonic()
        wait_until(lambda: time.monotonic() - down_at >= OUTAGE_SECONDS, timeout=30)
        private_redis.resume()
        count = len(submitter.submitted)
        wait_until(lambda: len(submitter.submitted) >= count + 40, timeout=30)
    finally:
        submitter.stop()
    assert not submitter.errors, submitter.errors

    # Every job runs: none waits on a message left in a live worker's ack set.
    done = wait_all_succeeded(env_db, submitter.submitted, within=RECONNECT_BOUND + 10)
    for job in done:  # and none ran twice
        assert job.attempts == (1 if job.type == "system.echo" else 2), job
