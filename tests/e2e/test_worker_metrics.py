"""A real worker pool of two processes serves its metrics on its port: the sum of both
processes' job metrics, its heartbeat gauges and process metrics, in an exposition promtool
accepts; its processes are listed by `conveyor workers` while they run, and not after."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.processes import BIN, Processes, free_port, run_cli
from tests.metrics import names, promtool_check, samples, value
from tests.stack import wait_until

pytestmark = pytest.mark.e2e


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def listed_workers(env: dict[str, str], cwd: Path) -> list[dict[str, object]]:
    found: list[dict[str, object]] = json.loads(run_cli("workers", "--json", env=env, cwd=cwd))
    return found


def test_a_pool_serves_the_sum_of_its_processes_metrics(
    procs: Processes, platform_env: dict[str, str], token: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **platform_env,
        "CONVEYOR_WORKER_METRICS_PORTS": f"system={port}",
        "CONVEYOR_METRICS_DIR": str(tmp_path / "metrics"),
        "CONVEYOR_WORKER_HEARTBEAT_SECONDS": "0.5",
    }
    _, api = procs.web(env)
    api = api.with_token(token)
    argv = [str(BIN / "dramatiq"), "conveyor.workers.system", "--processes", "2"]
    worker = procs.start("worker", [*argv, "--threads", "2"], env)
    worker.wait_for_output(r"metrics of pool system on http://127.0.0.1:\d+/metrics", timeout=30)

    jobs = [api.submit("system.echo", {"n": n}) for n in range(6)]
    for job in jobs:
        assert api.wait_finished(job["id"])["status"] == "succeeded"

    def counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        found = samples(scrape(port))
        attempts = {"type": "system.echo", "outcome": "succeeded", "error": "none"}
        return found if value(found, "conveyor_job_attempts_total", **attempts) == 6 else None

    found = wait_until(counted, timeout=10)
    assert value(found, "conveyor_job_run_duration_seconds_count", type="system.echo") == 6
    assert value(found, "conveyor_job_queue_wait_seconds_count", type="system.echo") == 6
    assert value(found, "conveyor_worker_jobs_in_flight", pool="system") == 0
    assert value(found, "conveyor_worker_up", pool="system") == 2  # one per process
    text = scrape(port)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= (
        names(text)
    )
    promtool_check(text)

    pids = {w["pid"] for w in listed_workers(env, tmp_path) if w["pool"] == "system"}
    assert len(pids) == 2
    worker.stop(timeout=20)
    assert listed_workers(env, tmp_path) == []  # each removed itself as it stopped
