"""Listening on Redis through an outage of its own Redis: listeners are told to read their
job every `POLL_SECONDS` while it is down, and hear announcements again once it is back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from conveyor.announcements import UNKNOWN, Notices, RedisAnnouncements
from tests.servers import PrivateRedis
from tests.stack import wait_until

pytestmark = pytest.mark.integration

PREFIX = "conveyor-test-announcements"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of the test's own: it is stopped and started again."""
    with PrivateRedis(tmp_path / "redis") as private:
        yield private


@pytest.fixture
async def listener(server: PrivateRedis) -> AsyncIterator[RedisAnnouncements]:
    """The web process's side."""
    announcements = RedisAnnouncements(server.url, PREFIX)
    try:
        yield announcements
    finally:
        await announcements.stop_listening()
        announcements.close()


def announce(server: PrivateRedis, job_id: uuid.UUID, status: str) -> None:
    """A worker's announcement (a client of its own, as a worker process has)."""
    worker = RedisAnnouncements(server.url, PREFIX)
    try:
        worker.announce(job_id, status)
    finally:
        worker.close()  # sends what is queued first


async def subscribed(server: PrivateRedis, job_id: uuid.UUID, count: int = 1) -> None:
    def check() -> bool:
        client = redis.Redis.from_url(server.url, socket_connect_timeout=1)
        try:
            [(_, found)] = client.pubsub_numsub(f"{PREFIX}:job:{job_id}")
            return int(found) == count
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    await asyncio.to_thread(wait_until, check, 10, 0.05)


async def hears(notices: Notices, status: str, within: float = 5.0) -> None:
    """Take notices until `status` is among them."""
    async with asyncio.timeout(within):
        while status not in await notices.take():
            pass


async def test_a_listener_reads_again_while_redis_is_down_and_hears_it_once_it_is_back(
    server: PrivateRedis, listener: RedisAnnouncements
) -> None:
    job_id = uuid.uuid4()
    async with listener.listen(job_id) as notices:
        await subscribed(server, job_id)
        announce(server, job_id, "running")
        await hears(notices, "running")

        server.stop()
        for _ in range(3):  # told to read the job again now, and every second after
            async with asyncio.timeout(2.5):
                assert await notices.take() == {UNKNOWN}

        server.resume()
        await subscribed(server, job_id)
        await hears(notices, UNKNOWN)  # once more: what was announced meanwhile is lost
        announce(server, job_id, "succeeded")
        await hears(notices, "succeeded")
    await subscribed(server, job_id, 0)
    assert listener.listening == 0


async def test_a_listener_that_starts_while_redis_is_down_subscribes_once_it_is_back(
    server: PrivateRedis, listener: RedisAnnouncements
) -> None:
    server.stop()
    job_id = uuid.uuid4()
    async with listener.listen(job_id) as notices:
        async with asyncio.timeout(2.5):
            assert await notices.take() == {UNKNOWN}
        server.resume()
        await subscribed(server, job_id)
        announce(server, job_id, "succeeded")
        await hears(notices, "succeeded")


async def test_listeners_of_one_job_share_its_subscription(
    server: PrivateRedis, listener: RedisAnnouncements
) -> None:
    job_id = uuid.uuid4()
    async with listener.listen(job_id) as first, listener.listen(job_id) as second:
        await subscribed(server, job_id)
        announce(server, job_id, "running")
        await hears(first, "running")
        await hears(second, "running")
        assert listener.listening == 1
    await subscribed(server, job_id, 0)
