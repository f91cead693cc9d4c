"""A job over HTTP, through a real broker and worker, with its status: both brokers."""

from __future__ import annotations

import pytest

from conveyor.broker import BrokerEnqueuer
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.integration


async def test_echo_job_succeeds_with_its_payload_as_result(stack: Stack) -> None:
    job = await stack.submit("system.echo", {"hello": "world", "n": 1})
    assert job["status"] == "queued"
    done = await stack.wait_for(job["id"], "succeeded")
    assert done["result"] == {"hello": "world", "n": 1}
    assert done["attempts"] == 1
    assert stack.row(job["id"]).published_at is not None


async def test_prefer_wait_answers_with_the_finished_job(stack: Stack) -> None:
    job = await stack.submit("system.echo", {"x": 1}, expect=200, Prefer="wait=10")
    assert job["status"] == "succeeded"
    assert job["result"] == {"x": 1}


async def test_failing_job_is_retried_then_succeeds(stack: Stack) -> None:
    job = await stack.submit("system.fail", {"failures": 2})
    done = await stack.wait_for(job["id"], "succeeded", "failed")
    assert done["status"] == "succeeded"
    assert done["attempts"] == 3
    assert done["result"] == {"attempts": 3}


async def test_job_out_of_retries_fails_and_is_dead_lettered(stack: Stack) -> None:
    job = await stack.submit("system.fail", {"failures": 10})
    done = await stack.wait_for(job["id"], "succeeded", "failed")
    assert done["status"] == "failed"
    assert done["attempts"] == 4  # the first attempt and three retries
    assert done["error"]["type"] == "RuntimeError"


async def test_cancel_running_job_stops_it(stack: Stack) -> None:
    job = await stack.submit("system.sleep", {"seconds": 30, "steps": 300})
    await stack.wait_for(job["id"], "running")
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert response.status == 202
    done = await stack.wait_for(job["id"], "cancelled", within=5)
    assert done["error"]["type"] == "Cancelled"


async def test_the_broker_tells_how_many_messages_wait_in_a_queue(stack: Stack) -> None:
    stack.stop_worker()
    for i in range(3):
        await stack.submit("system.echo", {"i": i})
    enqueuer = BrokerEnqueuer(stack.broker, threads=1)
    try:
        assert wait_until(lambda: enqueuer.waiting("system") == 3, timeout=10)
    finally:
        enqueuer.close()
