"""Prometheus metrics of the web process: requests by route and status, jobs submitted, the
process and Python collectors; the container's job metrics and the database-derived
figures (queue depths, oldest waiting job, live workers, desired workers per pool) joined in
at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.background.stats import Reading

#: Latency of requests answered at once.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: How long long polls and event streams stay open.
HELD_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "conveyor_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "conveyor_http_request_duration_seconds",
            "HTTP request latency by route template and method; long polls (wait) and event "
            "streams are apart, in conveyor_http_held_duration_seconds.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.held = Histogram(
            "conveyor_http_held_duration_seconds",
            "How long requests that hold their answer stayed open, by route template and "
            "kind (wait: a long poll; stream: an event stream).",
            ["route", "kind"],
            buckets=HELD_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "conveyor_http_rejected",
            "Requests refused before reaching a route: malformed (aiohttp's parser refused "
            "them) or header_timeout (headers not complete in time; the connection closed).",
            ["reason"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "conveyor_jobs_submitted",
            "Jobs accepted by this process, by type.",
            ["type"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        if GC_COLLECTOR is not None:
            GCCollector(registry=self.registry)

    def include(self, registry: CollectorRegistry) -> None:
        """Serve `registry`'s metrics too (the container's job metrics)."""
        self.registry.register(_Included(registry))

    def include_database(self, current: Callable[[], Reading | None]) -> None:
        """Serve the database-derived figures of `current()` (absent when it is None)."""
        self.registry.register(DatabaseCollector(current))


class _Included(Collector):
    """Another registry's metrics; it describes none, so names are not checked twice."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.included = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.included.collect()


class DatabaseCollector(Collector):
    """The last reading of the database-derived figures; only `conveyor_database_stats_up`
    while there is none (the database did not answer), so a scrape never waits for it."""

    def __init__(self, current: Callable[[], Reading | None]) -> None:
        self.current = current

    def describe(self) -> list[Metric]:
        return []  # read at each scrape: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        reading = self.current()
        yield GaugeMetricFamily(
            "conveyor_database_stats_up",
            "1 when the last reading of the database-derived metrics succeeded (they are "
            "absent otherwise), else 0.",
            value=0 if reading is None else 1,
        )
        if reading is None:
            return
        jobs = GaugeMetricFamily(
            "conveyor_queue_jobs",
            "Unfinished jobs by queue and state (waiting: a worker may start them now; "
            "scheduled: delayed or retrying later; running), database-wide.",
            labels=["queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "conveyor_queue_oldest_waiting_age_seconds",
            "How long the oldest waiting job of the queue has been due (0: none waits).",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "conveyor_queue_paused",
            "1 while the queue is paused (its workers take none of its jobs), else 0.",
            labels=["queue"],
        )
        for queue in reading.queues:
            jobs.add_metric([queue.queue, "waiting"], queue.waiting)
            jobs.add_metric([queue.queue, "scheduled"], queue.scheduled)
            jobs.add_metric([queue.queue, "running"], queue.running)
            oldest.add_metric([queue.queue], queue.oldest_waiting_seconds)
            paused.add_metric([queue.queue], 1 if queue.paused else 0)
        yield jobs
        yield oldest
        yield paused
        yield GaugeMetricFamily(
            "conveyor_outbox_unpublished",
            "Waiting jobs whose message the broker has not confirmed yet, database-wide.",
            value=reading.unpublished,
        )
        alive = GaugeMetricFamily(
            "conveyor_workers_alive",
            "Worker processes in the worker registry that beat within the worker timeout, by pool.",
            labels=["pool"],
        )
        for pool, n in sorted(reading.workers_alive.items()):
            alive.add_metric([pool], n)
        yield alive
        desired = GaugeMetricFamily(
            "conveyor_pool_desired_workers",
            "Worker processes the pool needs for the jobs arriving, their run times and its "
            "backlog (the capacity signal: feed it to KEDA or an HPA).",
            labels=["pool"],
        )
        utilization = GaugeMetricFamily(
            "conveyor_pool_utilization",
            "Share of the threads of the pool's live processes that run a job now.",
            labels=["pool"],
        )
        for figure in reading.capacity:
            desired.add_metric([figure.pool], figure.desired)
            if figure.utilization is not None:
                utilization.add_metric([figure.pool], figure.utilization)
        yield desired
        yield utilization
