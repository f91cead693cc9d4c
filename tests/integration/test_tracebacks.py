"""A failed attempt's traceback through real PostgreSQL, RabbitMQ and Redis: stored with the
error, read over the API (not in lists), carried by the job's events, masked and bounded."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import select

import tests.jobs  # noqa: F401  (test-only job types)
from conveyor.models import JobEvent
from tests.stack import FAST, Stack

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("broker_kind", ["rabbitmq"])]

#: Frames of the worker's machinery, which a job's traceback leaves out.
MACHINERY = ("conveyor/workers/", "conveyor/registry.py", "conveyor/aio.py", "concurrent/futures")


async def _events(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    response = await stack.client.get(f"/v1/jobs/{job_id}/events", headers=stack.headers())
    text = await asyncio.wait_for(response.text(), 20)
    return [
        json.loads(line.split(": ", 1)[1])
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


async def test_a_failed_job_shows_where_its_code_raised_in_its_error_and_events(
    stack: Stack,
) -> None:
    job = await stack.submit("testing.explode", {"message": "boom"})
    done = await stack.wait_for(job["id"], "failed")
    assert done["attempts"] == 2
    error = done["error"]
    assert (error["type"], error["message"]) == ("RuntimeError", "the helper failed")
    traceback = error["traceback"]
    assert traceback.startswith("Traceback (most recent call last):")
    assert "in explode\n    _explode_here(payload.message * payload.repeat)" in traceback
    assert "in _explode_here\n    raise ValueError(message)" in traceback
    assert "ValueError: boom" in traceback
    assert "The above exception was the direct cause" in traceback
    assert traceback.rstrip().endswith("RuntimeError: the helper failed")
    assert not any(part in traceback for part in MACHINERY), traceback

    # The retry and the final failure each carry their attempt's traceback.
    status_events = [e for e in await _events(stack, job["id"]) if e["kind"] == "status"]
    failures = [e for e in status_events if e["status"] in ("retrying", "failed")]
    assert [(e["status"], e["attempt"]) for e in failures] == [("retrying", 1), ("failed", 2)]
    for event in failures:
        assert event["message"] == "the helper failed"
        assert "ValueError: boom" in event["traceback"]
    assert all(e["traceback"] is None for e in status_events if e not in failures)
    with stack.db() as session:
        stored = session.scalars(
            select(JobEvent.traceback).where(
                JobEvent.job_id == uuid.UUID(job["id"]), JobEvent.status == "failed"
            )
        ).one()
    assert stored == traceback


async def test_a_list_leaves_the_traceback_out(stack: Stack) -> None:
    job = await stack.submit("testing.explode", {"message": "boom"})
    await stack.wait_for(job["id"], "failed")
    response = await stack.client.get("/v1/jobs", headers=stack.headers())
    (item,) = (await response.json())["items"]
    assert item["error"] == {"type": "RuntimeError", "message": "the helper failed"}


async def test_an_async_job_traceback_starts_at_its_function(stack: Stack) -> None:
    job = await stack.submit("testing.async_explode", {"message": "async boom"})
    done = await stack.wait_for(job["id"], "failed")
    traceback = done["error"]["traceback"]
    assert "in async_explode\n" in traceback
    assert traceback.rstrip().endswith("ValueError: async boom")
    assert "asyncio" not in traceback
    assert not any(part in traceback for part in MACHINERY), traceback


async def test_a_time_limit_shows_where_the_job_was(stack: Stack) -> None:
    job = await stack.submit("testing.busy", {"seconds": 30})
    done = await stack.wait_for(job["id"], "failed")
    error = done["error"]
    assert (error["type"], error["message"]) == ("TimeLimitExceeded", "time limit of 0.5s exceeded")
    assert "in busy\n" in error["traceback"]
    assert "JobTimeLimitError" in error["traceback"]


async def test_the_server_secrets_are_masked_and_the_traceback_is_bounded(stack: Stack) -> None:
    secret = FAST["secret_key"]
    job = await stack.submit("testing.explode", {"message": f"key={secret} ", "repeat": 2000})
    done = await stack.wait_for(job["id"], "failed")
    error = done["error"]
    assert secret not in json.dumps(error)
    assert error["message"].startswith("the helper failed")
    traceback = error["traceback"]
    assert "key=*** key=***" in traceback
    assert len(traceback.encode()) <= stack.settings.max_traceback_bytes
    assert traceback.startswith("[… ")  # says it was cut, and keeps the end
    assert traceback.rstrip().endswith("RuntimeError: the helper failed")
    events = await _events(stack, job["id"])
    assert not any(secret in json.dumps(event) for event in events)


async def test_an_async_jobs_time_limit_shows_where_it_waited(stack: Stack) -> None:
    job = await stack.submit("testing.async_busy", {"seconds": 30})
    done = await stack.wait_for(job["id"], "failed")
    error = done["error"]
    assert error["type"] == "TimeLimitExceeded"
    assert "in async_busy\n    await asyncio.sleep(payload.seconds)" in error["traceback"]
    last = error["traceback"].rstrip().splitlines()[-1]
    assert last.startswith("conveyor.errors.JobTimeLimitError: ")
