"""Stopping workers: the Procfile under honcho, signals to either or both of Dramatiq's
processes, and `conveyor dev`'s Ctrl-C. A stop lets running jobs finish within the drain
time and hands back the rest; neither is a lost worker."""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import Job, JobEvent
from conveyor.services.runs import HANDED_BACK
from tests.e2e.processes import BIN, Api, Process, Processes, environment, free_port
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"
#: honcho SIGKILLs what is left 5 s after the first of its processes exits.
HONCHO_KILL_WAIT = 5.0


def _row(db: sessionmaker[Session], job_id: str) -> Job:
    with db() as session:
        row = session.get(Job, uuid.UUID(job_id))
        assert row is not None
        session.expunge(row)
    return row


def _events(db: sessionmaker[Session], job_id: str) -> list[tuple[str, int, str | None]]:
    with db() as session:
        rows = session.execute(
            select(JobEvent.status, JobEvent.attempt, JobEvent.message)
            .where(JobEvent.job_id == uuid.UUID(job_id), JobEvent.kind == "status")
            .order_by(JobEvent.id)
        )
        return [(status, attempt, message) for status, attempt, message in rows]


def _running(api: Api, job_id: str) -> Callable[[], dict[str, Any] | None]:
    """True once the job runs and has reported progress (its function is under way)."""

    def running() -> dict[str, Any] | None:
        seen: dict[str, Any] = api.get(job_id)
        return seen if seen["status"] == "running" and (seen["progress"] or 0) > 0 else None

    return running


def _honcho(procs: Processes, env: dict[str, str], cwd: Path) -> tuple[Process, Api]:
    """`honcho start -f Procfile` (the project's own), once every process is up and the
    release step went idle; the API of its web process."""
    argv = [str(BIN / "honcho"), "start", "-f", str(PROCFILE), "-d", str(cwd)]
    honcho = procs.start("honcho", argv, env, cwd=cwd)
    honcho.wait_for_output(r"release\.1\s+\|.*idle until stopped", timeout=30)
    honcho.wait_for_output(r"worker-system\.1\s+\|.*Worker process is ready", timeout=30)
    api = Api(f"http://127.0.0.1:{env['CONVEYOR_PORT']}")
    wait_until(api.healthy, timeout=20, interval=0.05)
    assert honcho.returncode is None, "honcho stopped when the release step finished"
    return honcho, api


@pytest.fixture
def honcho_env(platform_env: dict[str, str]) -> dict[str, str]:
    port = free_port()
    return {
        **platform_env,
        "PATH": f"{BIN}{os.pathsep}{platform_env.get('PATH', '')}",
        "CONVEYOR_PORT": str(port),
        # As .env.example sets it: the notifications pool's emails link to the API.
        "CONVEYOR_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }


def test_honcho_stop_lets_a_running_job_finish_and_the_release_line_keeps_honcho_up(
    procs: Processes,
    honcho_env: dict[str, str],
    token: str,
    pg_db: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    env = {**honcho_env, "CONVEYOR_WORKER_DRAIN_SECONDS": "4"}
    honcho, api = _honcho(procs, env, tmp_path)
    api = api.with_token(token)
    job = api.submit("system.sleep", {"seconds": 2, "steps": 8})
    wait_until(_running(api, job["id"]), timeout=20, interval=0.05)

    assert honcho.popen is not None
    honcho.popen.send_signal(signal.SIGTERM)  # honcho SIGTERMs every process group
    honcho.wait_exit(timeout=HONCHO_KILL_WAIT + 10)

    output = honcho.output()
    assert "Killing worker process" not in output, output
    row = _row(pg_db, job["id"])
    assert (row.status, row.attempts, row.worker_losses, row.handbacks) == (
        "succeeded",
        1,
        0,
        0,
    )


def test_a_job_that_outlasts_the_drain_is_handed_back_and_finished_after_a_restart(
    procs: Processes,
    honcho_env: dict[str, str],
    token: str,
    pg_db: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    env = {**honcho_env, "CONVEYOR_WORKER_DRAIN_SECONDS": "0.5"}
    honcho, api = _honcho(procs, env, tmp_path)
    api = api.with_token(token)
    job = api.submit("system.sleep", {"seconds": 3, "steps": 12})
    wait_until(_running(api, job["id"]), timeout=20, interval=0.05)

    assert honcho.popen is not None
    honcho.popen.send_signal(signal.SIGINT)  # Ctrl-C in honcho's terminal
    honcho.wait_exit(timeout=HONCHO_KILL_WAIT + 10)
    row = _row(pg_db, job["id"])
    assert (row.status, row.attempts, row.worker_losses, row.handbacks) == ("queued", 1, 0, 1)
    assert _events(pg_db, job["id"])[-1] == ("queued", 1, HANDED_BACK)

    _, api = _honcho(procs, env, tmp_path)
    done = api.with_token(token).wait_finished(job["id"], within=30)
    assert (done["status"], done["attempts"], done["worker_losses"], done["handbacks"]) == (
        "succeeded",
        2,
        0,
        1,
    )
    assert [(s, a) for s, a, _ in _events(pg_db, job["id"])] == [
        ("queued", 0),
        ("running", 1),
        ("queued", 1),
        ("running", 2),
        ("succeeded", 2),
    ]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _signal(worker: Process, whom: str) -> None:
    """SIGTERM, as a process manager would send it: twice to the group (honcho, then a
    user's second Ctrl-C), twice to Dramatiq's main process only, or to its worker only."""
    if whom == "group":
        worker.signal_group(signal.SIGTERM)
        worker.wait_for_output(r"Stopping worker process", timeout=5)
        worker.signal_group(signal.SIGTERM)
    elif whom == "parent":
        assert worker.popen is not None
        worker.popen.send_signal(signal.SIGTERM)
        worker.wait_for_output(r"Stopping worker process", timeout=5)
        worker.popen.send_signal(signal.SIGTERM)
    else:
        [child] = wait_until(lambda: _children(worker.pid), timeout=5)
        os.kill(child, signal.SIGTERM)


@pytest.mark.parametrize("whom", ["group", "parent", "child"])
def test_any_signalled_worker_process_drains_and_logs_only_json(
    whom: str,
    procs: Processes,
    platform_env: dict[str, str],
    token: str,
    pg_db: sessionmaker[Session],
) -> None:
    _, api = procs.web(platform_env)
    api = api.with_token(token)
    env = {**platform_env, "CONVEYOR_LOG_FORMAT": "json", "CONVEYOR_WORKER_DRAIN_SECONDS": "5"}
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "system", "--processes", "1"]
    worker = procs.start("worker", [*argv, "--threads", "2"], env)
    worker.wait_for_output(r"Worker process is ready for action", timeout=30)
    job = api.submit("system.sleep", {"seconds": 1.5, "steps": 6})
    wait_until(_running(api, job["id"]), timeout=20, interval=0.05)

    _signal(worker, whom)
    assert worker.wait_exit(timeout=15) == 0, worker.output()

    row = _row(pg_db, job["id"])
    assert (row.status, row.attempts, row.worker_losses, row.handbacks) == (
        "succeeded",
        1,
        0,
        0,
    )
    lines = [line for line in worker.output().splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a line of the worker pool is not JSON: {line!r}")
    messages = [entry["message"] for entry in entries]
    for expected in ("is booting up", "Worker process is ready", "Stopping worker process"):
        assert any(expected in message for message in messages), (expected, messages)
    if whom != "child":
        assert any("ignored" in message for message in messages), messages
    assert any(
        entry.get("job_id") == job["id"] and "gets 5s to finish" in entry["message"]
        for entry in entries
    ), messages


def test_dev_ctrl_c_hands_back_a_job_that_outlasts_the_drain(
    procs: Processes, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = environment(
        {"CONVEYOR_WORKER_DRAIN_SECONDS": "0.5", "CONVEYOR_SWEEP_INTERVAL_SECONDS": "0.2"}
    )
    dev, api = procs.dev(env, project)
    job = api.submit("system.sleep", {"seconds": 2, "steps": 8})
    wait_until(_running(api, job["id"]), timeout=10, interval=0.05)

    dev.interrupt()
    assert dev.wait_exit(timeout=15) == 0, dev.output()
    assert "handed back" in dev.output()

    _, api = procs.dev(env, project)
    done = api.wait_finished(job["id"], within=20)
    assert (done["status"], done["attempts"], done["worker_losses"]) == ("succeeded", 2, 0)
