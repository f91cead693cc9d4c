"""The Redis broker leaves no fetched message where nobody runs it: messages of a dead worker,
and of a live worker's consumer that lost its connection, go back to their queue."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.errors import BrokerConnectionError

from conveyor.broker import build_broker, close_broker, outage_of
from tests.conftest import REDIS_URL
from tests.servers import PrivateRedis, free_port
from tests.stack import wait_until

pytestmark = pytest.mark.integration

QUEUE = "jobs"


@pytest.fixture
def namespace(services: None) -> Iterator[str]:
    """A broker namespace of the test's own; its keys are removed after."""
    name = f"conveyor-test-broker-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)
    client.close()


def make_broker(namespace: str, heartbeat_timeout: float = 10.0) -> dramatiq.Broker:
    broker = build_broker(
        REDIS_URL,
        namespace=namespace,
        redis_heartbeat_timeout=heartbeat_timeout,
        redis_maintenance_interval=heartbeat_timeout / 5,
    )
    broker.declare_queue(QUEUE)
    return broker


def message(n: int) -> dramatiq.Message[None]:
    return dramatiq.Message(queue_name=QUEUE, actor_name="t.job", args=(n,), kwargs={}, options={})


def receive(consumer: Consumer, count: int, within: float) -> list[MessageProxy]:
    """The next `count` messages the consumer delivers; fails if they take longer."""
    received: list[MessageProxy] = []

    def enough() -> bool:
        proxy = next(consumer)
        if proxy is not None:
            received.append(proxy)
        return len(received) >= count

    wait_until(enough, timeout=within, interval=0)
    return received


def nothing_more(consumer: Consumer, during: float) -> None:
    deadline = time.monotonic() + during
    while time.monotonic() < deadline:
        proxy = next(consumer)
        assert proxy is None, f"unexpected delivery of {proxy}"


def acks(broker: dramatiq.Broker, queue: str = QUEUE) -> set[bytes]:
    """The message ids in this broker's (process's) ack set of `queue`."""
    key = f"{broker.namespace}:__acks__.{broker.broker_id}.{queue}"  # type: ignore[attr-defined]
    return set(broker.client.smembers(key))  # type: ignore[attr-defined]


def test_a_message_whose_fetch_reply_was_lost_goes_back_when_the_consumer_restarts(
    namespace: str,
) -> None:
    broker = make_broker(namespace)
    broker.enqueue(message(1))
    # Redis ran the fetch, but its reply never reached the consumer (the connection broke):
    # the message sits in the ack set of a live process that does not know it.
    broker.do_fetch(QUEUE, 1)  # type: ignore[attr-defined]
    assert len(acks(broker)) == 1

    restarted = broker.consume(QUEUE, prefetch=2, timeout=100)  # as Dramatiq does on an error
    [delivered] = receive(restarted, 1, within=5)
    assert delivered.args == (1,)
    restarted.ack(delivered)
    assert acks(broker) == set()
    broker.close()


def test_messages_a_live_worker_holds_are_not_put_back_when_its_consumer_restarts(
    namespace: str,
) -> None:
    broker = make_broker(namespace)
    for n in range(3):
        broker.enqueue(message(n))
    first = broker.consume(QUEUE, prefetch=3, timeout=100)
    held = receive(first, 3, within=5)  # handed to worker threads, not acknowledged yet

    restarted = broker.consume(QUEUE, prefetch=3, timeout=100)
    nothing_more(restarted, during=0.5)
    assert len(acks(broker)) == 3
    for proxy in held:  # the worker threads finish: the restarted consumer acknowledges
        restarted.ack(proxy)
    assert acks(broker) == set()
    broker.close()


def test_delayed_messages_a_restarted_consumer_dropped_go_back(namespace: str) -> None:
    broker = make_broker(namespace)
    broker.enqueue(message(7), delay=60_000)
    delay_queue = f"{QUEUE}.DQ"
    first = broker.consume(delay_queue, prefetch=10, timeout=100)
    [parked] = receive(first, 1, within=5)  # kept in memory until its time comes
    assert parked.args == (7,)

    # Dramatiq empties a delay queue consumer's memory when it restarts it.
    restarted = broker.consume(delay_queue, prefetch=10, timeout=100)
    [again] = receive(restarted, 1, within=5)
    assert again.args == (7,) and "eta" in again.options
    assert len(acks(broker, delay_queue)) == 1
    broker.close()


def test_messages_of_a_dead_worker_go_back_within_the_heartbeat_timeout(namespace: str) -> None:
    dead = make_broker(namespace, heartbeat_timeout=1.0)
    for n in range(2):
        dead.enqueue(message(n))
    fetched = receive(dead.consume(QUEUE, prefetch=2, timeout=100), 2, within=5)
    assert len(fetched) == 2  # then the process dies: no more heartbeats, no acks
    died = time.monotonic()

    live = make_broker(namespace, heartbeat_timeout=1.0)
    consumer = live.consume(QUEUE, prefetch=4, timeout=100)
    again = receive(consumer, 2, within=5)
    took = time.monotonic() - died
    assert sorted(proxy.args for proxy in again) == [(0,), (1,)]
    # One heartbeat timeout, plus at most one maintenance interval (0.2 s) and a poll.
    assert 0.8 <= took <= 2.0, took
    dead.close()
    live.close()


def test_messages_of_a_live_worker_stay_with_it(namespace: str) -> None:
    busy = make_broker(namespace, heartbeat_timeout=1.0)
    busy.enqueue(message(1))
    busy_consumer = busy.consume(QUEUE, prefetch=1, timeout=100)
    [held] = receive(busy_consumer, 1, within=5)

    other = make_broker(namespace, heartbeat_timeout=1.0)
    other_consumer = other.consume(QUEUE, prefetch=4, timeout=100)
    deadline = time.monotonic() + 3.0  # three heartbeat timeouts
    while time.monotonic() < deadline:
        assert next(busy_consumer) is None  # its prefetch is full: it only beats and maintains
        assert next(other_consumer) is None
    busy_consumer.ack(held)
    busy.close()
    other.close()


def test_after_losing_its_connection_a_worker_waits_a_heartbeat_timeout_before_maintenance(
    namespace: str,
) -> None:
    other = make_broker(namespace, heartbeat_timeout=1.0)
    other.enqueue(message(1))
    [held] = receive(other.consume(QUEUE, prefetch=1, timeout=100), 1, within=5)
    # Redis was down for a while: every worker's last heartbeat is old, the live ones too.
    heartbeats = f"{namespace}:__heartbeats__"
    other.client.zadd(heartbeats, {other.broker_id: 1})  # type: ignore[attr-defined]

    back = make_broker(namespace, heartbeat_timeout=1.0)
    back.connection_lost(ConnectionError("lost"))  # type: ignore[attr-defined]  (its consumer saw the outage too)
    consumer = back.consume(QUEUE, prefetch=4, timeout=100)
    nothing_more(consumer, during=0.7)  # the other worker has time to send a heartbeat
    # It did not (it is dead after all): its message goes back once the wait is over.
    [again] = receive(consumer, 1, within=3)
    assert again.args == held.args
    other.close()
    back.close()


def test_a_put_back_that_cannot_reach_redis_raises_the_error_dramatiq_expects() -> None:
    # Dramatiq's consumer thread, closing a consumer after a connection error, puts back the
    # delayed messages it held and ignores a BrokerConnectionError; Redis's own error ended
    # the thread, and with it the process's delay queue.
    broker = build_broker(f"redis://127.0.0.1:{free_port()}/0", namespace="unreachable")
    consumer = broker.consume(f"{QUEUE}.DQ")
    held = MessageProxy(message(1).copy(options={"redis_message_id": "m-1"}))
    with pytest.raises(BrokerConnectionError):
        consumer.requeue([held])


def test_a_consumer_reports_an_outage_once_when_it_starts_and_once_when_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        broker = build_broker(server.url, namespace="outage")
        outage = outage_of(broker)
        consumer = broker.consume(QUEUE, prefetch=1, timeout=100)
        next(consumer)
        server.stop()
        with caplog.at_level(logging.INFO, logger="conveyor.broker"):
            for _ in range(3):  # Dramatiq's consumer thread restarts it after each error
                with pytest.raises(BrokerConnectionError):
                    next(broker.consume(QUEUE, prefetch=1, timeout=100))
            assert outage.down
            server.start()
            next(broker.consume(QUEUE, prefetch=1, timeout=100))
        assert not outage.down
        said = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
        assert said[0] == ("WARNING", "broker unreachable"), said
        assert [level for level, _ in said] == ["WARNING", "INFO"], said
        assert said[1][1].startswith("broker reachable again"), said
        close_broker(broker)
