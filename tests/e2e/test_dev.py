"""`conveyor dev`: jobs survive a Ctrl-C and a restart in the same directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.processes import Processes, environment
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

#: Seconds `conveyor dev` may take to exit after Ctrl-C, on top of finishing a running job.
EXIT_WITHIN = 10.0


def test_dev_keeps_its_jobs_across_ctrl_c_and_restart(procs: Processes, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    # One worker thread, so a second job waits in the in-memory broker behind the first.
    env = environment({"CONVEYOR_WORKER_THREADS": "1", "CONVEYOR_SWEEP_INTERVAL_SECONDS": "0.2"})
    dev, api = procs.dev(env, project)
    assert (project / ".conveyor" / "conveyor.db").is_file()

    echo = api.submit("system.echo", {"hello": "dev"}, expect=200, Prefer="wait=10")
    assert (echo["status"], echo["result"]) == ("succeeded", {"hello": "dev"})
    running = api.submit("system.sleep", {"seconds": 2, "steps": 4})
    waiting = api.submit("system.sleep", {"seconds": 0.5, "steps": 2})

    def is_running() -> dict[str, Any] | None:
        seen: dict[str, Any] = api.get(running["id"])
        return seen if seen["status"] == "running" else None

    wait_until(is_running, timeout=10, interval=0.05)
    assert api.get(waiting["id"])["status"] == "queued"

    dev.interrupt()  # Ctrl-C: the running job is let finish, the waiting one stays queued
    interrupted_at = time.monotonic()
    assert dev.wait_exit(timeout=2 + EXIT_WITHIN) == 0, dev.output()
    print(f"conveyor dev exited {time.monotonic() - interrupted_at:.1f}s after Ctrl-C")
    assert "stopping" in dev.output()

    first_token = api.token
    assert first_token is not None
    restarted, api = procs.dev(env, project)
    again = api.get(echo["id"])
    assert (again["id"], again["status"], again["result"]) == (
        echo["id"],
        "succeeded",
        {"hello": "dev"},
    )
    for job in (running, waiting):
        done = api.wait_finished(job["id"], within=15)
        assert done["status"] == "succeeded", done
    # The waiting job's message was lost with the in-memory broker; the restart re-published it.
    assert api.get(waiting["id"])["attempts"] == 1
    # The signing key is kept in ./.conveyor: a token of the first run still works.
    assert api.with_token(first_token).get(echo["id"])["status"] == "succeeded"

    restarted.interrupt()
    assert restarted.wait_exit(timeout=EXIT_WITHIN) == 0, restarted.output()
