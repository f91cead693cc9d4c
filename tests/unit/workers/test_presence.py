"""The worker registry from the worker's side: a started worker records itself, beats, keeps
its `up` gauge, and removes itself when it stops cleanly."""

from __future__ import annotations

import datetime as dt

from conveyor.services import workers
from tests.metrics import samples, value
from tests.stack import Stack, wait_until

TIMEOUT = dt.timedelta(seconds=30)


async def test_a_running_worker_is_in_the_registry_until_it_stops(embedded_stack: Stack) -> None:
    stack = embedded_stack
    [row] = wait_until(lambda: workers.alive(stack.db, TIMEOUT))
    assert (row.pool, row.threads, row.jobs_in_hand) == ("all", 4, 0)
    assert row.queues == ["auth", "notifications", "system"]
    text = await (await stack.client.get("/metrics")).text()
    found = samples(text)
    assert value(found, "conveyor_worker_up", pool="all") == 1
    assert (value(found, "conveyor_worker_last_heartbeat_timestamp_seconds", pool="all") or 0) > 0
    stack.container.stats.read_once()
    found = samples(await (await stack.client.get("/metrics")).text())
    assert value(found, "conveyor_workers_alive", pool="all") == 1
    stack.stop_worker()
    assert workers.alive(stack.db, TIMEOUT) == []
    found = samples(await (await stack.client.get("/metrics")).text())
    assert value(found, "conveyor_worker_up", pool="all") == 0


async def test_the_registry_counts_the_jobs_in_hand(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.sleep", {"seconds": 60, "steps": 600})
    await stack.wait_for(job["id"], "running")
    lifecycle = stack.lifecycle
    presence = next(m for m in stack.broker.middleware if type(m).__name__ == "WorkerPresence")
    assert presence.process is not None
    wait_until(lifecycle.running_jobs)
    workers.beat(stack.db, presence.process, len(lifecycle.running_jobs()))
    [row] = workers.alive(stack.db, TIMEOUT)
    assert row.jobs_in_hand == 1
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert response.status in (200, 202)
    await stack.wait_for(job["id"], "cancelled")
