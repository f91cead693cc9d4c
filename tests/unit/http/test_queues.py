"""Pausing a queue in the embedded configuration (`conveyor dev`: SQLite, the stub broker and
in-process worker threads)."""

from __future__ import annotations

import logging

import pytest

from tests.stack import Stack, wait_until


async def test_a_paused_queue_runs_its_jobs_after_the_resume(
    embedded_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = embedded_stack
    caplog.set_level(logging.INFO, logger="conveyor.workers.lifecycle")
    admin = stack.headers(stack.admin_token)
    response = await stack.client.post("/v1/queues/system/pause", headers=admin)
    assert response.status == 200, await response.text()
    job = await stack.submit("system.echo", {"n": 1})

    def parked() -> bool:
        return any(
            "its queue is paused" in r.getMessage() and job["id"] in r.getMessage()
            for r in caplog.records
        )

    wait_until(parked)
    row = stack.row(job["id"])
    assert (row.status, row.attempts, row.published_at) == ("queued", 0, None)
    response = await stack.client.get("/v1/queues", headers=admin)
    system = next(q for q in (await response.json())["items"] if q["name"] == "system")
    assert system["paused"] is True and system["waiting"] == 1

    response = await stack.client.post("/v1/queues/system/resume", headers=admin)
    assert (await response.json())["published"] == 1
    assert (await stack.wait_for(job["id"], "succeeded"))["attempts"] == 1


async def test_the_pause_body_is_optional_in_the_openapi_document(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get("/openapi.json")
    document = await response.json()
    pause = document["paths"]["/v1/queues/{queue}/pause"]["post"]
    assert pause["requestBody"]["required"] is False
    cancel = document["paths"]["/v1/jobs/cancel"]["post"]
    assert cancel["requestBody"]["required"] is True
