"""Metrics, queue depths and the worker registry on PostgreSQL and both brokers: the queue
wait read by the claim's one statement, the depth query on its index, the CLI's commands,
and `/metrics` while the database refuses connections."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from conveyor import bootstrap, cli
from conveyor.announcements import MemoryAnnouncements
from conveyor.http.app import create_app
from conveyor.services import queues
from tests.metrics import names, promtool_check, samples, value
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.integration


async def test_a_job_run_is_measured_with_its_queue_wait(stack: Stack) -> None:
    job = await stack.submit("system.echo", {"n": 1})
    await stack.wait_for(job["id"], "succeeded")
    found = samples(await (await stack.client.get("/metrics")).text())
    assert value(found, "conveyor_job_queue_wait_seconds_count", type="system.echo") == 1
    wait = value(found, "conveyor_job_queue_wait_seconds_sum", type="system.echo")
    assert wait is not None and 0 <= wait < 10
    assert value(found, "conveyor_job_run_duration_seconds_count", type="system.echo") == 1


def test_queue_depths_are_read_through_the_unstarted_jobs_index(
    pg_db: sessionmaker[Session],
) -> None:
    with pg_db() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = " ".join(
            row[0]
            for row in session.execute(
                text(
                    "EXPLAIN SELECT queue, status, coalesce(next_attempt_at, run_at, created_at)"
                    " <= now(), count(*), min(coalesce(next_attempt_at, run_at, created_at))"
                    " FROM jobs WHERE status IN ('scheduled', 'queued', 'retrying')"
                    " GROUP BY 1, 2, 3"
                )
            )
        )
    assert "ix_jobs_unstarted_queue_status_due" in plan, plan
    assert queues.stats(pg_db, ["system"], failed=True, timeout_seconds=2)[0].waiting == 0


async def test_the_cli_lists_live_workers_and_queue_depths(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.stop_worker()
    job = await stack.submit("system.echo", {})
    as_json = argparse.Namespace(json=True)
    await asyncio.to_thread(cli.cmd_queues, as_json, stack.settings)
    [system] = [q for q in json.loads(capsys.readouterr().out) if q["queue"] == "system"]
    assert (system["waiting"], system["running"], system["failed"]) == (1, 0, 0)
    assert system["oldest_waiting_seconds"] >= 0

    stack.start_worker(threads=3)
    await stack.wait_for(job["id"], "succeeded")

    def listed() -> list[dict[str, object]]:
        cli.cmd_workers(as_json, stack.settings)
        return [w for w in json.loads(capsys.readouterr().out) if w["threads"] == 3]

    [worker] = wait_until(listed)
    assert (worker["pool"], worker["jobs_in_hand"]) == ("all", 0)
    cli.cmd_workers(argparse.Namespace(json=False), stack.settings)
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["POOL", "HOST", "PID"]
    assert f" {worker['pid']} " in table


async def test_metrics_answer_while_postgres_refuses_connections(
    stack: Stack,
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    settings = stack.settings.model_copy(
        update={
            "database_url": "postgresql+psycopg://postgres@127.0.0.1:1/conveyor",
            "broker_url": "stub://",
        }
    )
    container = bootstrap.Container(
        settings, bootstrap.ProcessRole.WEB, announcements=MemoryAnnouncements()
    )
    try:
        client = await aiohttp_client(create_app(container, sweeper=False))
        assert await asyncio.to_thread(container.stats.read_once) is None
        started = time.monotonic()
        response = await client.get("/metrics")
        text_ = await response.text()
        assert response.status == 200
        assert time.monotonic() - started < 2
        assert value(samples(text_), "conveyor_database_stats_up") == 0
        assert "conveyor_queue_jobs" not in names(text_)
        promtool_check(text_)
        await client.close()
    finally:
        container.close()
