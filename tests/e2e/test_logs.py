"""What `conveyor web` and a worker log, as JSON lines, about requests and job attempts:
the web process's line when it listens and an access line per request; the worker's start
and end line of every attempt, with the traceback of a failed one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import member_token
from tests.e2e.processes import Process, Processes
from tests.stack import wait_until

pytestmark = pytest.mark.e2e


def _json_lines(process: Process) -> list[dict[str, Any]]:
    lines = []
    for line in process.output().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_the_web_and_worker_json_logs_say_what_happened_with_fields(
    procs: Processes, platform_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**platform_env, "CONVEYOR_LOG_FORMAT": "json"}
    web, api = procs.web(env)
    worker = procs.worker(env)
    api = api.with_token(member_token(env, tmp_path))

    ok = api.submit("system.echo", {"a": 1})
    assert api.wait_finished(ok["id"])["status"] == "succeeded"
    bad = api.submit("system.fail", {"failures": 10, "message": "planned"})
    failed = api.wait_finished(bad["id"])
    assert (failed["status"], failed["attempts"]) == ("failed", 4)
    assert "in fail\n" in failed["error"]["traceback"]

    # The web process: where it listens, then one access line per request.
    web_lines = _json_lines(web)
    (listening,) = [line for line in web_lines if line["message"].startswith("listening on")]
    assert listening["port"] == int(api.base_url.rsplit(":", 1)[1])
    assert listening["pid"] == web.pid and listening["version"]
    access = [line for line in web_lines if line["logger"] == "conveyor.access"]
    submits = [line for line in access if line["route"] == "/v1/jobs" and line["method"] == "POST"]
    assert [line["status"] for line in submits] == [202, 202]
    polls = [line for line in access if line["path"] == f"/v1/jobs/{ok['id']}"]
    assert polls and all(line["route"] == "/v1/jobs/{job_id}" for line in polls)
    for line in submits + polls:
        assert line["request_id"] and line["remote"] == "127.0.0.1"
        assert line["duration_ms"] >= 0

    # The worker: a start and an end line per attempt, with the job's id as a field.
    def attempts_logged() -> list[dict[str, Any]]:
        lines = [line for line in _json_lines(worker) if line.get("job_id") == bad["id"]]
        return lines if sum("outcome" in line for line in lines) == 4 else []

    lines = wait_until(attempts_logged, timeout=10)
    ends = [line for line in lines if "outcome" in line]
    assert [(line["level"], line["outcome"]) for line in ends] == [
        ("warning", "retrying"),
        ("warning", "retrying"),
        ("warning", "retrying"),
        ("error", "failed"),
    ]
    assert all("RuntimeError: planned (attempt" in line["exc_info"] for line in ends)
    assert all(line["job_type"] == "system.fail" for line in ends)
    starts = [line for line in lines if "started on queue" in line["message"]]
    assert [(s["attempt"], s["queue"], s["level"]) for s in starts] == [
        (n, "system", "info") for n in (1, 2, 3, 4)
    ]
    (ok_end,) = [
        line for line in _json_lines(worker) if line.get("job_id") == ok["id"] and "outcome" in line
    ]
    assert (ok_end["outcome"], ok_end["job_type"], ok_end["attempt"]) == (
        "succeeded",
        "system.echo",
        1,
    )
    assert ok_end["duration_ms"] >= 0
