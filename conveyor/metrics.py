"""The job metrics of a process (run time, queue wait, attempts, jobs in flight, worker
heartbeats, publish failures), on one Prometheus registry per container.

A worker pool's processes record them in Prometheus multiprocess mode (files that the pool's
exposition server sums, see `conveyor.workers.exposition`); the web process and `conveyor dev`
serve the same registry on `/metrics`. Each gauge says how its values from several processes
combine (`multiprocess_mode`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Run time of a job: from milliseconds (a no-op) to an hour (a report).
RUN_BUCKETS = (
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
    300.0,
    900.0,
    3600.0,
)
#: Wait of a due job before a worker starts it: milliseconds when workers keep up, minutes
#: behind a backlog (the same range as run times).
WAIT_BUCKETS = RUN_BUCKETS
#: The `error` label of an attempt that raised nothing.
NO_ERROR = "none"


class JobMetrics:
    """The job metrics one process records; `registry` is new unless given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.run_time = Histogram(
            "conveyor_job_run_duration_seconds",
            "Run time of job attempts (the job's function, from its start to its return or "
            "error), by job type.",
            ["type"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "conveyor_job_queue_wait_seconds",
            "Time from when a job became due (submitted, its run_at, or its retry time) to "
            "when a worker started the attempt, by job type.",
            ["type"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.attempts = Counter(
            "conveyor_job_attempts",
            "Job attempts by job type, outcome (succeeded, retrying, failed, cancelled; "
            "interrupted: cut short by a service failure; lost: the attempt no longer held "
            "the job; stopped: the worker stopped under it; unrecorded: the database could "
            "not record it) and error type (the exception's class, or none).",
            ["type", "outcome", "error"],
            registry=self.registry,
        )
        self.finished = Counter(
            "conveyor_jobs_finished",
            "Jobs that reached a final status (succeeded, failed, cancelled) in this process, "
            "by job type.",
            ["type", "status"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "conveyor_worker_jobs_in_flight",
            "Jobs running now, by pool (summed over the pool's live processes).",
            ["pool"],
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.up = Gauge(
            "conveyor_worker_up",
            "Worker processes of the pool whose last heartbeat (lease renewal and worker "
            "registry) reached the database: 1 per process, summed.",
            ["pool"],
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.heartbeat = Gauge(
            "conveyor_worker_last_heartbeat_timestamp_seconds",
            "Unix time of the last successful heartbeat, of the pool's process that beat "
            "least recently.",
            ["pool"],
            multiprocess_mode="livemin",
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "conveyor_publish_failures",
            "Job messages the broker did not take (the sweeper publishes them later).",
            registry=self.registry,
        )
