"""What the Redis broker tells the sweeper about lost data, on a Redis of the test's own: a
restart (a new run id) or a flush (its mark gone) counts until handled, and the jobs whose
messages it holds are read from the queue and its delay queue, fetched ones included."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conveyor.broker import BrokerEnqueuer, build_broker
from conveyor.services.jobs import JobMessage
from tests.servers import PrivateRedis

pytestmark = pytest.mark.integration

QUEUE = "jobs"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def enqueuer(server: PrivateRedis) -> Iterator[BrokerEnqueuer]:
    broker = build_broker(server.url, namespace="loss")
    broker.declare_queue(QUEUE)
    enqueuer = BrokerEnqueuer(broker, threads=1)
    yield enqueuer
    enqueuer.close()
    broker.close()


def test_a_restart_or_a_flush_is_reported_until_handled(
    server: PrivateRedis, enqueuer: BrokerEnqueuer
) -> None:
    first = enqueuer.broker_restarted()
    assert first is not None  # a Redis never checked: it may be new, or emptied
    enqueuer.restart_handled(first)
    assert enqueuer.broker_restarted() is None

    server.restart()  # keeps its data (append-only file, fsync always), not its run id
    second = enqueuer.broker_restarted()
    assert second is not None and second != first
    assert enqueuer.broker_restarted() == second  # until handled
    enqueuer.restart_handled(second)
    assert enqueuer.broker_restarted() is None

    client = redis.Redis.from_url(server.url)
    try:
        client.flushall()
    finally:
        client.close()
    assert enqueuer.broker_restarted() == second  # same run, data gone


def test_the_held_jobs_are_those_waiting_delayed_or_fetched(enqueuer: BrokerEnqueuer) -> None:
    waiting, delayed, fetched = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    enqueuer.publish(
        [
            JobMessage(fetched, "t.job", QUEUE),
            JobMessage(waiting, "t.job", QUEUE),
            JobMessage(delayed, "t.job", QUEUE, delay_ms=60_000),
        ]
    )
    consumer = enqueuer.broker.consume(QUEUE, prefetch=1, timeout=100)
    try:
        proxy = next(consumer)
        assert proxy is not None and proxy.args == (str(fetched),)  # in the ack set now
        assert enqueuer.held_jobs(QUEUE) == {waiting, delayed, fetched}
        consumer.ack(proxy)
        assert enqueuer.held_jobs(QUEUE) == {waiting, delayed}
    finally:
        consumer.close()
    assert enqueuer.held_jobs("other") == set()


def test_a_broker_that_keeps_its_messages_never_reports_a_restart() -> None:
    enqueuer = BrokerEnqueuer(build_broker("stub://"), threads=1)
    try:
        assert enqueuer.broker_restarted() is None
        assert enqueuer.held_jobs(QUEUE) == set()
    finally:
        enqueuer.close()
