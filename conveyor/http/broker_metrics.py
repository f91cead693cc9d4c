"""Prometheus metrics of the web process's link to the broker, read from its `Outage`."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.logs import Outage


class BrokerOutageCollector(Collector):
    """Reads the outage's counts when scraped, so publishing costs nothing more."""

    def __init__(self, outage: Outage) -> None:
        self.outage = outage

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "conveyor_broker_reconnect_attempts",
            "Attempts of this process to reach the broker that failed (publishes, queue counts).",
            value=self.outage.attempts,
        )
        yield CounterMetricFamily(
            "conveyor_broker_outages",
            "Outages of the broker seen by this process (each logged once as a WARNING).",
            value=self.outage.outages,
        )
        yield GaugeMetricFamily(
            "conveyor_broker_outage",
            "1 while this process cannot reach the broker, else 0.",
            value=1 if self.outage.down else 0,
        )


def register_broker_metrics(registry: CollectorRegistry, outage: Outage) -> None:
    """Add the broker metrics to the app's registry."""
    registry.register(BrokerOutageCollector(outage))
