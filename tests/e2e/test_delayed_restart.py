"""Delayed jobs survive restarts: the row, not a process, remembers when a job is due."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import Job, JobEvent
from conveyor.models.base import utcnow
from tests.e2e.processes import Api, Processes, environment
from tests.stack import wait_until

pytestmark = pytest.mark.e2e


def submit_delayed(api: Api, n: int, delay: float) -> dict[str, Any]:
    status, job = api.request(
        "POST", "/v1/jobs", {"type": "system.echo", "payload": {"n": n}, "delay_seconds": delay}
    )
    assert status == 202, job
    assert job["status"] == "scheduled", job
    return job  # type: ignore[no-any-return]


def row(db: sessionmaker[Session], job_id: str) -> Job:
    with db() as session:
        found = session.get(Job, uuid.UUID(job_id))
    assert found is not None
    return found


def status_events(db: sessionmaker[Session], job_id: str) -> Counter[str]:
    with db() as session:
        return Counter(
            session.scalars(
                select(JobEvent.status).where(
                    JobEvent.job_id == uuid.UUID(job_id), JobEvent.kind == "status"
                )
            )
        )


def assert_ran_once_after_run_at(db: sessionmaker[Session], job: dict[str, Any], n: int) -> None:
    done = row(db, job["id"])
    assert (done.status, done.attempts, done.result) == ("succeeded", 1, {"n": n})
    assert done.run_at is not None and done.started_at is not None
    assert done.started_at >= done.run_at, (done.started_at, done.run_at)
    assert status_events(db, job["id"]) == Counter(
        {"scheduled": 1, "queued": 1, "running": 1, "succeeded": 1}
    )


def test_delayed_jobs_run_once_after_web_and_worker_are_stopped_and_started_again(
    procs: Processes, platform_env: dict[str, str], token: str, pg_db: sessionmaker[Session]
) -> None:
    web, api = procs.web(platform_env)
    api = api.with_token(token)
    worker = procs.worker(platform_env)
    jobs = [submit_delayed(api, n, delay) for n, delay in enumerate([4.0, 5.0, 6.0])]

    web.stop()  # SIGTERM: a clean shutdown of both
    worker.stop()
    assert web.returncode is not None and worker.returncode is not None
    for job in jobs:
        waiting = row(pg_db, job["id"])
        assert (waiting.status, waiting.attempts) == ("scheduled", 0)

    procs.worker(platform_env)
    _, api = procs.web(platform_env)
    api = api.with_token(token)
    for n, job in enumerate(jobs):
        assert api.wait_finished(job["id"], within=30)["status"] == "succeeded"
        assert_ran_once_after_run_at(pg_db, job, n)


def test_a_delayed_job_that_came_due_while_everything_was_killed_runs_once_on_restart(
    procs: Processes, platform_env: dict[str, str], token: str, pg_db: sessionmaker[Session]
) -> None:
    web, api = procs.web(platform_env)
    api = api.with_token(token)
    worker = procs.worker(platform_env)
    job = submit_delayed(api, 7, 2.0)
    run_at = dt.datetime.fromisoformat(job["run_at"])

    assert web.kill() == -9  # SIGKILL, as a crash would
    assert worker.kill() == -9
    wait_until(lambda: utcnow() > run_at + dt.timedelta(seconds=0.5), timeout=10, interval=0.05)
    overdue = row(pg_db, job["id"])
    assert (overdue.status, overdue.attempts) == ("scheduled", 0)  # nobody promoted it

    procs.worker(platform_env)
    restarted = utcnow()
    _, api = procs.web(platform_env)
    api = api.with_token(token)
    assert api.wait_finished(job["id"], within=30)["status"] == "succeeded"
    assert_ran_once_after_run_at(pg_db, job, 7)
    started = row(pg_db, job["id"]).started_at
    assert started is not None and started >= restarted


def test_a_delayed_job_runs_on_time_when_only_the_web_process_restarts_before_it_is_due(
    procs: Processes, platform_env: dict[str, str], token: str, pg_db: sessionmaker[Session]
) -> None:
    web, api = procs.web(platform_env)
    api = api.with_token(token)
    procs.worker(platform_env)
    job = submit_delayed(api, 9, 8.0)
    run_at = dt.datetime.fromisoformat(job["run_at"])
    assert web.kill() == -9
    _, api = procs.web(platform_env)  # a new process: its sweeper reads the due time back
    api = api.with_token(token)
    assert utcnow() < run_at, "the web process took too long to start again"
    assert api.wait_finished(job["id"], within=30)["status"] == "succeeded"
    assert_ran_once_after_run_at(pg_db, job, 9)
    done = row(pg_db, job["id"])
    assert done.started_at is not None and done.run_at is not None
    assert (done.started_at - done.run_at).total_seconds() < 1.0  # on time, not a sweep late


def test_conveyor_dev_keeps_a_delayed_job_across_ctrl_c_and_restart(
    procs: Processes, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = environment({"CONVEYOR_SWEEP_INTERVAL_SECONDS": "0.2"})
    dev, api = procs.dev(env, project)
    job = submit_delayed(api, 11, 3.0)
    dev.interrupt()
    assert dev.wait_exit(timeout=10) == 0, dev.output()
    assert utcnow() < dt.datetime.fromisoformat(job["run_at"]), "it ran before the restart"

    restarted, api = procs.dev(env, project)
    done = api.wait_finished(job["id"], within=20)
    assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 1, {"n": 11})
    started = dt.datetime.fromisoformat(done["started_at"])
    assert started >= dt.datetime.fromisoformat(done["run_at"])
    restarted.interrupt()
    assert restarted.wait_exit(timeout=10) == 0, restarted.output()
