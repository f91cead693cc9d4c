"""Prometheus metrics of the web process: requests by route and status, jobs by type."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.counts_expire_at = 0.0
        self.requests = Counter(
            "conveyor_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "conveyor_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=(
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
                60,
            ),
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
        self.jobs = Gauge(
            "conveyor_jobs",
            "Jobs in the database by type and status (outcome, for finished ones).",
            ["type", "status"],
            registry=self.registry,
        )
        self.unpublished = Gauge(
            "conveyor_outbox_unpublished",
            "Waiting jobs whose message the broker has not confirmed yet.",
            registry=self.registry,
        )
