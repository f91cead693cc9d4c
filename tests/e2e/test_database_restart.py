"""The database restarts (or crashes) under running jobs: they ride it out and finish, and
nothing is charged to them."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import JobEvent
from tests.e2e.conftest import member_token, private_platform_env
from tests.e2e.processes import BIN, Api, Processes, free_port
from tests.servers import PrivatePostgres, PrivateRedis
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FINISHED = ("succeeded", "failed", "cancelled")


#: How each way of restarting is tested, and a lease that outlasts its outage with room to
#: spare on a busy machine: a fast or immediate restart is down for 0.5-1 s; a killed
#: postmaster until it is started again and has recovered from the crash (1.5-2 s here).
RESTARTS = [("fast", "5"), ("immediate", "5"), ("kill", "10")]


@pytest.fixture(params=RESTARTS, ids=[how for how, _ in RESTARTS])
def restart(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def env(
    restart: tuple[str, str], private_pg: PrivatePostgres, private_redis: PrivateRedis
) -> dict[str, str]:
    """The platform on a private PostgreSQL, with the Redis broker on a private Redis (no
    RabbitMQ boot to wait for). Requested before `procs`, so the processes stop first."""
    return private_platform_env(
        private_pg,
        broker_url=private_redis.url,
        redis_url=private_redis.url,
        CONVEYOR_LEASE_SECONDS=restart[1],
        PYTHONPATH=str(ROOT),  # the test-only job types of `tests.jobs`
    )


def _api(procs: Processes, env: dict[str, str], tmp_path: Path) -> Api:
    """`conveyor web` and a worker, both knowing the test-only job types; the API client."""
    token = member_token(env, tmp_path)
    port = free_port()
    web = "import sys, tests.jobs; from conveyor.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", web, "web", "--host", "127.0.0.1", "--port", str(port)]
    process = procs.start("web", argv, env)
    api = Api(f"http://127.0.0.1:{port}", token)

    def up() -> bool:
        assert process.returncode is None, process.output()
        return api.healthy()

    wait_until(up, timeout=20, interval=0.05)
    worker = [str(BIN / "dramatiq"), "tests.e2e.testing_pool", "--processes", "1"]
    procs.start("worker", [*worker, "--threads", "5"], env).wait_for_output(
        r"Worker process is ready for action", timeout=30
    )
    return api


def _restart(pg: PrivatePostgres, how: str) -> float:
    """Restart the database as `how` says; how long it took."""
    started = time.monotonic()
    if how == "kill":  # SIGKILL of the postmaster, then a start with crash recovery
        pg.kill()
        pg.resume()
    else:
        pg.restart(mode=how)
    return time.monotonic() - started


def _running(api: Api, jobs: list[dict[str, Any]]) -> bool:
    seen = [api.get(job["id"]) for job in jobs]
    return all(s["status"] == "running" and (s["progress"] or 0) > 0 for s in seen)


def _finished(api: Api, job_id: str) -> dict[str, Any] | None:
    try:
        job: dict[str, Any] = api.get(job_id)
    except (OSError, AssertionError):
        return None  # the web process may answer 503 while the database is down
    return job if job["status"] in FINISHED else None


def _statuses(env_db: sessionmaker[Session], job_id: str) -> list[tuple[str, int]]:
    with env_db() as session:
        rows = session.execute(
            select(JobEvent.status, JobEvent.attempt)
            .where(JobEvent.job_id == uuid.UUID(job_id), JobEvent.kind == "status")
            .order_by(JobEvent.id)
        )
        return [(status, attempt) for status, attempt in rows]


def test_running_jobs_ride_out_a_database_restart_and_are_charged_nothing(
    restart: tuple[str, str],
    env: dict[str, str],
    env_db: sessionmaker[Session],
    procs: Processes,
    private_pg: PrivatePostgres,
    tmp_path: Path,
) -> None:
    api = _api(procs, env, tmp_path)
    jobs = [api.submit("system.sleep", {"seconds": 3, "steps": 30}) for _ in range(4)]
    wait_until(lambda: _running(api, jobs), timeout=20, interval=0.05)

    downtime = _restart(private_pg, restart[0])

    for job in jobs:
        done = wait_until(lambda job=job: _finished(api, job["id"]), timeout=40, interval=0.2)
        assert done["status"] == "succeeded", (downtime, done)
        assert done["result"] == {"slept": 3.0}
        assert done["error"] is None, done
        # The progress reports and lease renewals during the outage were retried (or a
        # report dropped); the attempt went on: one run, no loss, no retry.
        assert (done["attempts"], done["worker_losses"]) == (1, 0), (downtime, done)
        assert _statuses(env_db, job["id"]) == [("queued", 0), ("running", 1), ("succeeded", 1)]


def test_a_job_whose_own_query_meets_a_database_restart_runs_again_without_using_a_retry(
    restart: tuple[str, str],
    env: dict[str, str],
    env_db: sessionmaker[Session],
    procs: Processes,
    private_pg: PrivatePostgres,
    tmp_path: Path,
) -> None:
    api = _api(procs, env, tmp_path)
    job = api.submit("testing.query", {"seconds": 3, "steps": 30})  # no retries
    wait_until(lambda: _running(api, [job]), timeout=20, interval=0.05)

    downtime = _restart(private_pg, restart[0])

    done = wait_until(lambda: _finished(api, job["id"]), timeout=40, interval=0.2)
    assert done["status"] == "succeeded", (downtime, done)
    assert done["error"] is None, done
    # Its held connection died with the server: that run was cut short by infrastructure,
    # counted as a worker loss; the next run finished. Its retries (none) were not touched.
    assert (done["attempts"], done["worker_losses"], done["max_retries"]) == (2, 1, 0), done
    assert done["result"] == {"attempt": 2}
    assert _statuses(env_db, job["id"]) == [
        ("queued", 0),
        ("running", 1),
        ("retrying", 1),
        ("running", 2),
        ("succeeded", 2),
    ]
