"""RabbitMQ stopped while jobs are submitted: every job is accepted, runs once and succeeds,
and each process says so in two log lines (a WARNING, then an INFO), with no traceback.

The broker is a RabbitMQ node of this module's own (other tests use the shared one), with a
vhost per test; the database is the run's.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import Job, JobEvent
from tests.e2e.processes import Api, Process, Processes
from tests.servers import PrivateRabbitMQ
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

#: How long the broker stays down at least: the worker's consumers retry every 3 s and the
#: web's sweeper every 0.2 s, so each process fails many times over.
OUTAGE_SECONDS = 5.0
#: A line of Conveyor's text log format at WARNING or above (Dramatiq's main process, which
#: logs in its own format, logs nothing at these levels here).
LOUD = re.compile(r"^\S+ (WARNING|ERROR|CRITICAL) ", re.MULTILINE)
OUTAGE_STARTED = r"WARNING +conveyor\.broker: broker unreachable: "
OUTAGE_ENDED = r"INFO +conveyor\.broker: broker reachable again after [0-9.]+ s \(\d+ failed"


def test_jobs_submitted_while_rabbitmq_is_down_all_run_exactly_once(
    procs: Processes,
    platform_env: dict[str, str],
    token: str,
    pg_db: sessionmaker[Session],
    private_rabbitmq: PrivateRabbitMQ,
) -> None:
    env = {**platform_env, "CONVEYOR_BROKER_URL": private_rabbitmq.add_vhost("outage-once")}
    web, api = procs.web(env)
    api = api.with_token(token)
    worker = procs.worker(env)
    ids = [api.submit("system.echo", {"n": n})["id"] for n in range(5)]
    # Nothing in flight when the broker goes: an acknowledgement lost with its connection
    # makes Dramatiq warn once per message, which is not what this test counts.
    for job_id in ids:
        api.wait_finished(job_id, within=30)
    assert _metric(api, "conveyor_broker_outage") == 0

    private_rabbitmq.stop_app()
    try:
        down_at = time.monotonic()
        assert _broker_check(api) == "failed", "/readyz should name the broker"
        ids += [api.submit("system.echo", {"n": n})["id"] for n in range(5, 10)]
        web.wait_for_output(OUTAGE_STARTED, timeout=15)
        worker.wait_for_output(OUTAGE_STARTED, timeout=15)
        ids += [api.submit("system.echo", {"n": n})["id"] for n in range(10, 15)]
        wait_until(lambda: time.monotonic() - down_at >= OUTAGE_SECONDS, timeout=30)
        assert _metric(api, "conveyor_broker_outage") == 1
        attempts = _metric(api, "conveyor_broker_reconnect_attempts_total")
        assert attempts >= 5, "the sweeper retried every 0.2 s"
    finally:
        private_rabbitmq.start_app()

    wait_until(lambda: _broker_check(api) == "ok", timeout=30, interval=0.2)
    ids += [api.submit("system.echo", {"n": n})["id"] for n in range(15, 20)]

    for n, job_id in enumerate(ids):
        done = api.wait_finished(job_id, within=30)
        assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 1, {"n": n})
    web.wait_for_output(OUTAGE_ENDED, timeout=15)
    worker.wait_for_output(OUTAGE_ENDED, timeout=15)
    assert _metric(api, "conveyor_broker_outage") == 0
    assert _metric(api, "conveyor_broker_outages_total") == 1
    # Observed with Dramatiq 2.2.1: the worker process does not exit when RabbitMQ goes away;
    # its consumer threads reconnect every 3 s, so no restart (by a supervisor, or here) is
    # needed. The web process stays up as well.
    assert (worker.returncode, web.returncode) == (None, None)
    for process in (web, worker):
        _assert_one_warning_and_one_info(process)

    with pg_db() as session:
        rows = dict(session.execute(select(Job.id, Job.attempts)).all())
        events = session.execute(
            select(JobEvent.job_id, JobEvent.status, func.count())
            .where(JobEvent.kind == "status")
            .group_by(JobEvent.job_id, JobEvent.status)
        ).all()
    assert rows == {uuid.UUID(job_id): 1 for job_id in ids}
    history: dict[uuid.UUID, dict[str, int]] = {}
    for job_id, status, count in events:
        history.setdefault(job_id, {})[status] = count
    # Each job was claimed once and finished once: a redelivered message was skipped.
    once = {"queued": 1, "running": 1, "succeeded": 1}
    assert history == {uuid.UUID(job_id): once for job_id in ids}


def _assert_one_warning_and_one_info(process: Process) -> None:
    """The outage is in the process's log as one WARNING and one INFO, and nothing louder:
    no ERROR or CRITICAL line, no traceback, however often it tried to reconnect."""
    log = process.output()
    loud = [m.group(0) + log[m.end() :].split("\n", 1)[0] for m in LOUD.finditer(log)]
    assert len(loud) == 1 and re.search(OUTAGE_STARTED, loud[0]), (process.name, loud)
    assert len(re.findall(OUTAGE_ENDED, log)) == 1, (process.name, log)
    assert "Traceback" not in log, (process.name, log)


def _broker_check(api: Api) -> str:
    """What `/readyz` says of the broker."""
    status, body = api.request("GET", "/readyz")
    assert status in (200, 503), (status, body)
    return str(body["checks"]["broker"])


def _metric(api: Api, name: str) -> float:
    """The value of an unlabelled metric in `/metrics`."""
    with urllib.request.urlopen(f"{api.base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics:\n{text}"
    return float(match.group(1))
