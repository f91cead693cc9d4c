"""A pool's metrics files and their serving process: the run's directory, the stale ones
removed, the process metrics copied into the shared files."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from conveyor.settings import Settings
from conveyor.workers import exposition
from tests.metrics import samples, value
from tests.stack import test_settings as settings_of


def settings_in(directory: Path, **overrides: object) -> Settings:
    return settings_of(metrics_dir=directory, **overrides)


def test_a_run_directory_is_named_after_the_dramatiq_parent_and_its_start(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    directory = exposition.run_directory(settings, parent=os.getpid())
    pid, _, started = directory.name.partition("-")
    assert directory.parent == tmp_path
    assert pid == str(os.getpid())
    assert started.isdigit()  # Linux: the start time, so a reused pid is another run


def test_a_pool_without_a_port_records_nothing(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, worker_metrics_ports={"reports": 9300})
    assert exposition.prepare(settings, "system") is None
    assert list(tmp_path.iterdir()) == []


def test_directories_of_finished_runs_are_removed(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    mine = exposition.run_directory(settings, parent=os.getpid())
    running = exposition.run_directory(settings, parent=1)  # init runs for ever
    gone = tmp_path / "999999999-1"
    reused = tmp_path / f"{os.getpid()}-1"  # this pid, but another start time
    for directory in (mine, running, gone, reused):
        directory.mkdir()
    exposition.remove_stale(settings, keep=mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, running.name])


def test_the_process_mirror_copies_cpu_memory_and_collections() -> None:
    registry = CollectorRegistry()
    mirror = exposition.ProcessMirror(registry)
    mirror.update()
    sum(range(100_000))
    mirror.update()
    found = samples(generate(registry))
    assert (value(found, "process_cpu_seconds_total") or 0) > 0
    assert (value(found, "process_resident_memory_bytes") or 0) > 0
    assert value(found, "python_gc_collections_total", generation="0") is not None


def generate(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


@pytest.mark.parametrize(
    ("given", "ports"),
    [
        ("system=9191,reports=9192", {"system": 9191, "reports": 9192}),
        ("system=9191;billing,reports=9192", {"system": 9191, "billing,reports": 9192}),
        ("billing,reports=9192;", {"billing,reports": 9192}),
        ('{"system": 9191}', {"system": 9191}),
        ("", None),
    ],
)
def test_pool_ports_are_read_as_pairs_or_json(given: str, ports: object) -> None:
    assert settings_of(worker_metrics_ports=given).worker_metrics_ports == ports


@pytest.mark.parametrize(
    "given", ["system", "system=0", "a=9191,b=9191", "=9191", "billing,reports=9192", "a=1;b"]
)
def test_bad_pool_ports_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="worker_metrics_ports"):
        settings_of(worker_metrics_ports=given)


def test_the_built_in_pools_serve_metrics_by_default() -> None:
    ports = Settings(_env_file=None).worker_metrics_ports  # type: ignore[call-arg]
    assert ports == {"system": 9191, "notifications": 9192, "auth": 9193}


def test_a_pool_without_a_port_says_how_to_give_it_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=exposition.__name__)
    assert exposition.prepare(settings_in(tmp_path), "reports") is None
    assert "pool reports serves no metrics" in caplog.text
    assert "CONVEYOR_WORKER_METRICS_PORTS" in caplog.text


def test_worker_processes_share_their_metrics_files(tmp_path: Path) -> None:
    """Two processes of one run (children of one parent) record into the same directory,
    and their sum is what the pool serves (this process stays out of multiprocess mode)."""
    script = f"""
import os, sys
from conveyor.settings import Settings
from conveyor.workers import exposition
settings = Settings(_env_file=None, metrics_dir={str(tmp_path)!r},
                    worker_metrics_ports={{"system": 9191}})
exposition.prepare(settings, "system")
from conveyor.metrics import JobMetrics
metrics = JobMetrics()
metrics.in_flight.labels("system").inc(int(sys.argv[1]))
metrics.attempts.labels("system.echo", "succeeded", "none").inc()
"""
    for n in ("2", "3"):
        subprocess.run([sys.executable, "-c", script, n], check=True, timeout=60)
    [directory] = tmp_path.iterdir()
    assert directory.name.startswith(f"{os.getpid()}-")
    registry = CollectorRegistry()
    from prometheus_client import multiprocess

    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    found = samples(generate(registry))
    attempts = {"type": "system.echo", "outcome": "succeeded", "error": "none"}
    assert value(found, "conveyor_job_attempts_total", **attempts) == 2
    # Both processes have exited without marking themselves dead: still counted as live.
    assert value(found, "conveyor_worker_jobs_in_flight", pool="system") == 5


@pytest.mark.parametrize(
    ("error", "level"), [(ConnectionResetError("reset"), "DEBUG"), (ValueError("bad"), "WARNING")]
)
def test_a_failed_metrics_request_is_logged_not_printed(
    error: Exception,
    level: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """socketserver prints a plain-text traceback to stderr; in JSON mode every line is JSON."""
    server = exposition.MetricsServer(("127.0.0.1", 0), exposition._Handler)
    caplog.set_level(logging.DEBUG, logger=exposition.__name__)
    try:
        try:
            raise error
        except Exception:
            server.handle_error(None, ("127.0.0.1", 40000))
    finally:
        server.server_close()
    assert capsys.readouterr().err == ""
    [record] = [r for r in caplog.records if r.name == exposition.__name__]
    assert record.levelname == level and "127.0.0.1" in record.getMessage()
