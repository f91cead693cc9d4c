"""`/metrics` of the web process (here the embedded one, which runs the jobs too): job
metrics, long polls and streams kept out of request latency, the database-derived series,
their absence while the database fails, and an exposition `promtool` accepts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from conveyor import bootstrap
from conveyor.announcements import MemoryAnnouncements
from conveyor.http.app import create_app
from tests.metrics import Samples, names, promtool_check, samples, value
from tests.stack import Stack
from tests.stack import test_settings as settings_of


async def submit_delayed(stack: Stack) -> dict[str, Any]:
    response = await stack.client.post(
        "/v1/jobs",
        json={"type": "system.echo", "payload": {}, "delay_seconds": 3600},
        headers=stack.headers(),
    )
    body: dict[str, Any] = await response.json()
    assert response.status == 202, body
    assert body["status"] == "scheduled"
    return body


async def scrape(stack: Stack) -> str:
    response = await stack.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return await response.text()


async def scraped_once(
    stack: Stack, ready: Callable[[Samples], object], within: float = 10.0
) -> Samples:
    """The samples of the first scrape in which `ready(samples)` holds (bounded)."""
    deadline = time.monotonic() + within
    while True:
        found = samples(await scrape(stack))
        if ready(found):
            return found
        assert time.monotonic() < deadline, "the metrics did not show it in time"
        await asyncio.sleep(0.05)


async def test_a_job_run_is_measured(embedded_stack: Stack) -> None:
    stack = embedded_stack
    ok = await stack.submit("system.echo", {})
    failed = await stack.submit("system.fail", {"failures": 5}, token=None)
    await stack.wait_for(ok["id"], "succeeded")
    await stack.wait_for(failed["id"], "retrying", "failed")
    # The worker counts an attempt once its outcome is recorded: a moment after the status.
    found = await scraped_once(
        stack,
        lambda found: value(
            found,
            "conveyor_job_attempts_total",
            type="system.fail",
            outcome="retrying",
            error="RuntimeError",
        ),
    )
    assert value(found, "conveyor_job_run_duration_seconds_count", type="system.echo") == 1
    assert value(found, "conveyor_job_queue_wait_seconds_count", type="system.echo") == 1
    wait = value(found, "conveyor_job_queue_wait_seconds_sum", type="system.echo")
    assert wait is not None and 0 <= wait < 10
    assert (
        value(
            found,
            "conveyor_job_attempts_total",
            type="system.echo",
            outcome="succeeded",
            error="none",
        )
        == 1
    )
    assert (
        value(
            found,
            "conveyor_job_attempts_total",
            type="system.fail",
            outcome="retrying",
            error="RuntimeError",
        )
        or 0
    ) >= 1
    assert value(found, "conveyor_jobs_finished_total", type="system.echo", status="succeeded")
    assert value(found, "conveyor_worker_jobs_in_flight", pool="all") == 0
    assert value(found, "conveyor_publish_failures_total") == 0


async def test_a_cancelled_waiting_job_counts_as_finished(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await submit_delayed(stack)
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert response.status == 200, await response.text()
    found = samples(await scrape(stack))
    assert value(found, "conveyor_jobs_finished_total", type="system.echo", status="cancelled")


async def test_long_polls_and_streams_are_not_request_latencies(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.sleep", {"seconds": 0.3})
    await stack.get(job["id"], wait="10", until="finished")
    events = await stack.client.get(f"/v1/jobs/{job['id']}/events", headers=stack.headers())
    assert events.status == 200
    await events.read()
    await stack.get(job["id"])  # a plain read
    found = samples(await scrape(stack))
    route = "/v1/jobs/{job_id}"
    assert value(found, "conveyor_http_request_duration_seconds_count", route=route, method="GET")
    latency = value(found, "conveyor_http_request_duration_seconds_sum", route=route, method="GET")
    assert latency is not None and latency < 0.25  # not the long poll's wait
    assert value(found, "conveyor_http_held_duration_seconds_count", route=route, kind="wait")
    stream = "/v1/jobs/{job_id}/events"
    assert value(found, "conveyor_http_held_duration_seconds_count", route=stream, kind="stream")
    assert not value(
        found, "conveyor_http_request_duration_seconds_count", route=stream, method="GET"
    )


async def test_database_series_come_from_the_last_reading(embedded_stack: Stack) -> None:
    stack = embedded_stack
    stack.stop_worker()  # so the jobs wait
    await stack.submit("system.echo", {})
    await submit_delayed(stack)
    assert stack.container.stats.read_once() is not None
    found = samples(await scrape(stack))
    assert value(found, "conveyor_database_stats_up") == 1
    assert value(found, "conveyor_queue_jobs", queue="system", state="waiting") == 1
    assert value(found, "conveyor_queue_jobs", queue="system", state="scheduled") == 1
    assert value(found, "conveyor_queue_jobs", queue="system", state="running") == 0
    oldest = value(found, "conveyor_queue_oldest_waiting_age_seconds", queue="system")
    assert oldest is not None and 0 <= oldest < 10
    assert value(found, "conveyor_outbox_unpublished") is not None
    # One job arrived and waits: the system pool needs a process (the capacity signal).
    assert value(found, "conveyor_pool_desired_workers", pool="system") == 1
    assert value(found, "conveyor_queue_paused", queue="system") == 0


async def test_a_paused_queue_has_its_gauge(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.post(
        "/v1/queues/system/pause", headers=stack.headers(stack.admin_token)
    )
    assert response.status == 200, await response.text()
    assert stack.container.stats.read_once() is not None
    found = samples(await scrape(stack))
    assert value(found, "conveyor_queue_paused", queue="system") == 1


async def test_the_exposition_has_the_process_and_python_collectors(
    embedded_stack: Stack,
) -> None:
    found = names(await scrape(embedded_stack))
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= found
    assert "python_gc_collections_total" in found


async def test_promtool_accepts_the_web_exposition(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {})
    await stack.wait_for(job["id"], "succeeded")
    await stack.client.get("/nope")
    stack.container.stats.read_once()
    promtool_check(await scrape(stack))


async def test_metrics_answer_at_once_while_the_database_fails(
    aiohttp_client,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "conveyor.db"
    settings = settings_of(
        database_url=f"sqlite:///{missing}", broker_url="stub://", redis_url=None
    )
    container = bootstrap.Container(
        settings, bootstrap.ProcessRole.WEB, announcements=MemoryAnnouncements()
    )
    try:
        client: TestClient = await aiohttp_client(create_app(container, sweeper=False))
        assert container.stats.read_once() is None
        started = time.monotonic()
        response = await asyncio.wait_for(client.get("/metrics"), 5)
        text = await response.text()
        assert response.status == 200
        assert time.monotonic() - started < 2
        found = samples(text)
        assert value(found, "conveyor_database_stats_up") == 0
        assert "conveyor_queue_jobs" not in names(text)
        assert "process_cpu_seconds_total" in names(text)  # the rest of the scrape
        promtool_check(text)
        await client.close()
    finally:
        container.close()
