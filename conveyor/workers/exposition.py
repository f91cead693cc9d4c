"""A worker pool's metrics endpoint, with Prometheus multiprocess mode.

`dramatiq conveyor.workers.<pool> --processes N` starts N worker processes. When the pool has
a port in `CONVEYOR_WORKER_METRICS_PORTS` (by default the system pool, on 9191), each process
records its metrics in files of a directory of that `dramatiq` run (under
`CONVEYOR_METRICS_DIR`, named after the `dramatiq` parent process), and Dramatiq forks one
more process from the parent (`WorkerExposition.forks`) that serves their sum on the port: one
scrape target per pool and host, however many processes.
The directories of earlier runs are removed when the next one starts serving.

The worker processes' own process and Python metrics (CPU, memory, file descriptors, garbage
collections) are copied into the shared files at each heartbeat (`ProcessMirror`), since the
serving process cannot read them.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)

from conveyor.settings import Settings, get_settings

logger = logging.getLogger(__name__)

#: The file of a run's directory that tells the serving process what to serve, and where.
CONFIG_FILE = "exposition.json"


def base_directory(settings: Settings) -> Path:
    return settings.metrics_dir or Path(tempfile.gettempdir()) / "conveyor-metrics"


def _started(pid: int) -> str:
    """The start time of process `pid` (in clock ticks since boot, from /proc), or "" where
    that cannot be read: with the pid it names one run, even once the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def run_directory(settings: Settings, parent: int | None = None) -> Path:
    """The directory of this `dramatiq` run: every worker process and the serving process
    of one run share their parent."""
    parent = os.getppid() if parent is None else parent
    return base_directory(settings) / f"{parent}-{_started(parent)}"


def prepare(settings: Settings, pool: str) -> Path | None:
    """In a worker process of `pool`, before any metric is created: record metrics in the
    run's directory if the pool has a metrics port (and return the directory), else None."""
    port = (settings.worker_metrics_ports or {}).get(pool)
    if port is None:
        logger.info(
            "pool %s serves no metrics: give it a port in CONVEYOR_WORKER_METRICS_PORTS "
            "(`%s=9192`, `;` between pools)",
            pool,
            pool,
        )
        return None
    directory = run_directory(settings)
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.mkdir(mode=0o700, exist_ok=True)
    # prometheus_client finds its directory only in this variable, read as each value is made.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    config = directory / f"{CONFIG_FILE}.{os.getpid()}"
    config.write_text(json.dumps({"pool": pool, "host": settings.metrics_host, "port": port}))
    config.replace(directory / CONFIG_FILE)  # whole, whichever process writes last
    return directory


class WorkerExposition(Middleware):
    """Dramatiq middleware of a pool with a metrics port: forks the serving process, and
    marks each worker process dead in the metrics files when it stops."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def forks(self) -> list[Any]:
        return [serve]

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        multiprocess.mark_process_dead(os.getpid(), str(self.directory))  # type: ignore[no-untyped-call]


class ProcessMirror:
    """Copies this process's process and Python metrics into the multiprocess files: gauges
    summed over the live processes (the start time: the oldest), counters by increments."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self._source = ProcessCollector(registry=None)
        self._cpu = Counter(
            "process_cpu_seconds", "User and system CPU time, in seconds.", registry=registry
        )
        self._gauges = {
            "process_resident_memory_bytes": Gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                multiprocess_mode="livesum",
                registry=registry,
            ),
            "process_virtual_memory_bytes": Gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                multiprocess_mode="livesum",
                registry=registry,
            ),
            "process_open_fds": Gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                multiprocess_mode="livesum",
                registry=registry,
            ),
            "process_start_time_seconds": Gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                multiprocess_mode="livemin",
                registry=registry,
            ),
        }
        self._collections = Counter(
            "python_gc_collections",
            "Number of times this generation was collected.",
            ["generation"],
            registry=registry,
        )
        self._collected = Counter(
            "python_gc_objects_collected",
            "Objects collected during gc.",
            ["generation"],
            registry=registry,
        )
        self._seen: dict[str, float] = {}

    def _add(self, key: str, counter: Counter, value: float) -> None:
        delta = value - self._seen.get(key, 0.0)
        if delta > 0:
            counter.inc(delta)
            self._seen[key] = value

    def update(self) -> None:
        for family in self._source.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    self._add("cpu", self._cpu, sample.value)
                elif sample.name in self._gauges:
                    self._gauges[sample.name].set(sample.value)
        for generation, stats in enumerate(gc.get_stats()):
            label = str(generation)
            self._add(f"gc{label}", self._collections.labels(label), stats["collections"])
            self._add(f"obj{label}", self._collected.labels(label), stats["collected"])


class _Handler(BaseHTTPRequestHandler):
    directory: Path

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        PlatformCollector(registry=registry)
        body = generate_latest(registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(format, *args)


class MetricsServer(ThreadingHTTPServer):
    """The pool's metrics server: a request that fails (a scraper that hangs up, most often)
    is logged through the logger, as a JSON line in JSON mode, not printed to stderr."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        peer = client_address[0] if isinstance(client_address, tuple) else client_address
        if isinstance(error, ConnectionError):
            logger.debug("metrics scrape from %s cut short: %s", peer, error)
        else:
            logger.warning("metrics request from %s failed", peer, exc_info=True)


def remove_stale(settings: Settings, keep: Path) -> None:
    """Remove the directories of earlier runs (whose parent process is gone, or is another
    process with a reused pid)."""
    for directory in base_directory(settings).iterdir():
        if directory == keep or not directory.is_dir():
            continue
        pid, _, started = directory.name.partition("-")
        if pid.isdigit() and started == _started(int(pid)) and Path(f"/proc/{pid}").exists():
            continue  # another run, still going
        shutil.rmtree(directory, ignore_errors=True)


def serve() -> int:
    """The serving process (a Dramatiq fork): the sum of the run's metrics files on the
    pool's port, until Dramatiq stops it."""
    settings = get_settings()
    directory = run_directory(settings)
    config = json.loads((directory / CONFIG_FILE).read_text())
    remove_stale(settings, directory)
    handler = type("Handler", (_Handler,), {"directory": directory})
    try:
        server = MetricsServer((config["host"], int(config["port"])), handler)
    except OSError as exc:  # the workers run on; only their metrics are not served
        logger.error(
            "cannot serve the metrics of pool %s on %s:%d: %s (is the port taken, by another "
            "`conveyor worker` of this pool on this host? see CONVEYOR_WORKER_METRICS_PORTS); "
            "its jobs run on",
            config["pool"],
            config["host"],
            config["port"],
            exc,
        )
        return 1
    logger.info(
        "metrics of pool %s on http://%s:%d/metrics", config["pool"], config["host"], config["port"]
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
