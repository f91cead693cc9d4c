"""Pausing a queue with the real processes: `conveyor web`, a `dramatiq` worker process and
the `conveyor queues` commands, on the run's PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.processes import Processes, run_cli

pytestmark = pytest.mark.e2e


def test_a_paused_queue_waits_for_the_resume_then_runs_its_jobs(
    platform_env: dict[str, str], token: str, procs: Processes, tmp_path: Path
) -> None:
    env = platform_env
    _, api = procs.web(env)
    api = api.with_token(token)
    worker = procs.worker(env)
    assert "paused;" in run_cli(
        "queues", "pause", "system", "--reason", "e2e", env=env, cwd=tmp_path
    )

    ids = [api.submit("system.echo", {"i": i})["id"] for i in range(3)]
    for job_id in ids:  # each message taken by the worker process, and its job left waiting
        worker.wait_for_output(rf"job {job_id} waits: its queue is paused")
    assert {api.get(job_id)["status"] for job_id in ids} == {"queued"}
    listed = json.loads(run_cli("queues", "--json", env=env, cwd=tmp_path))
    system = next(q for q in listed if q["queue"] == "system")
    assert system["paused"] is True and system["pause_reason"] == "e2e"
    assert (system["waiting"], system["consumers"], system["consumer_threads"]) == (3, 1, 4)

    out = run_cli("queues", "resume", "system", env=env, cwd=tmp_path)
    assert out == "queue system: resumed; 3 waiting job(s) published again\n"
    for job_id in ids:
        job = api.wait_finished(job_id)
        assert (job["status"], job["attempts"]) == ("succeeded", 1)
