"""The broker's outage as the web process and the workers report it: one WARNING when it
starts, one INFO when it ends, every failed attempt counted (and exposed in `/metrics`)."""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import ConnectionClosed, QueueNotFound
from prometheus_client import CollectorRegistry, generate_latest

from conveyor.broker import BrokerEnqueuer, build_broker, outage_of
from conveyor.errors import BrokerUnavailableError
from conveyor.http.broker_metrics import BrokerOutageCollector, register_broker_metrics
from conveyor.services.jobs import JobMessage
from tests.e2e.processes import free_port
from tests.stack import Stack

README = Path(__file__).resolve().parents[2] / "README.md"


class FlakyBroker(StubBroker):
    """A stub broker that refuses messages, as an unreachable RabbitMQ does, while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.declare_queue("system")
        self.down = False

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        if self.down:
            raise ConnectionClosed(ConnectionRefusedError(111, "Connection refused"))
        return super().enqueue(message, delay=delay)


def _message() -> JobMessage:
    return JobMessage(uuid.uuid4(), "system.echo", "system")


def _loud(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.levelno >= 20]


def test_publishes_failing_through_an_outage_log_one_warning_and_one_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    broker = FlakyBroker()
    enqueuer = BrokerEnqueuer(broker, threads=1)
    try:
        enqueuer.publish([_message()])
        broker.down = True
        for _ in range(4):
            with pytest.raises(BrokerUnavailableError, match="Connection refused"):
                enqueuer.publish([_message()])
        assert enqueuer.waiting("system") == 1  # the stub answers counts even while "down"
        broker.down = False
        enqueuer.publish([_message()])
        enqueuer.publish([_message()])
    finally:
        enqueuer.close()
    loud = _loud(caplog)
    assert len(loud) == 2, loud
    assert loud[0].startswith("WARNING broker unreachable: ConnectionClosed(")
    assert loud[1].startswith("INFO broker reachable again after ")
    assert loud[1].endswith("(4 failed attempts)")
    assert enqueuer.outage is outage_of(broker)
    assert (enqueuer.outage.attempts, enqueuer.outage.outages) == (4, 1)


def test_a_failure_that_is_no_outage_is_raised_as_it_is() -> None:
    enqueuer = BrokerEnqueuer(StubBroker(), threads=1)  # no queue declared: a bug, not an outage
    try:
        with pytest.raises(QueueNotFound):
            enqueuer.publish([_message()])
    finally:
        enqueuer.close()
    assert (enqueuer.outage.down, enqueuer.outage.attempts) == (False, 0)


def test_a_background_publish_that_fails_is_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    broker = FlakyBroker()
    broker.down = True
    enqueuer = BrokerEnqueuer(broker, threads=1)
    enqueuer.publish_soon(_message())
    enqueuer.close()  # waits for the publish
    assert [r.levelname for r in caplog.records if r.levelno >= logging.INFO] == ["WARNING"]
    assert enqueuer.outage.down and enqueuer.take_confirmed() == []


def test_a_rabbitmq_consumer_that_cannot_connect_reports_to_the_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    broker = build_broker(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")  # nobody there
    try:
        for _ in range(2):  # what Dramatiq's consumer thread does every 3 s
            with pytest.raises(ConnectionClosed):
                broker.consume("system")
    finally:
        broker.close()
    outage = outage_of(broker)
    assert (outage.down, outage.attempts) == (True, 2)
    assert [r.getMessage()[:19] for r in caplog.records if r.name == "conveyor.broker"] == [
        "broker unreachable:"
    ]


def test_the_broker_metrics_read_the_outage() -> None:
    broker = FlakyBroker()
    outage = outage_of(broker)
    registry = CollectorRegistry()
    register_broker_metrics(registry, outage)
    for _ in range(3):
        outage.failed(ConnectionRefusedError(111, "Connection refused"))
    text = generate_latest(registry).decode()
    assert "conveyor_broker_reconnect_attempts_total 3.0" in text
    assert "conveyor_broker_outages_total 1.0" in text
    assert "conveyor_broker_outage 1.0" in text
    outage.succeeded()
    assert "conveyor_broker_outage 0.0" in generate_latest(registry).decode()


async def test_the_web_process_exposes_the_broker_metrics(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get("/metrics")
    text = await response.text()
    assert re.search(r"^conveyor_broker_reconnect_attempts_total 0\.0$", text, re.MULTILINE)
    assert re.search(r"^conveyor_broker_outage 0\.0$", text, re.MULTILINE)


def test_the_broker_metrics_are_documented_in_the_readme() -> None:
    text = README.read_text()
    for family in BrokerOutageCollector(outage_of(StubBroker())).collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}`" in text, f"README.md does not document the metric {name}"
