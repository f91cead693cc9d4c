"""The HTTP API over real PostgreSQL, RabbitMQ and Redis: ownership, listing, idempotency,
bad input, the outbox sweeper and the lease reconciler."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select, update

import tests.jobs  # noqa: F401  (test-only job types)
from conveyor import bootstrap
from conveyor.announcements import MemoryAnnouncements
from conveyor.broker import to_dramatiq
from conveyor.http.app import create_app
from conveyor.models import JobEvent
from conveyor.models.base import utcnow
from conveyor.models.job import jobs_t
from conveyor.services import submissions
from conveyor.services.jobs import JobMessage
from conveyor.services.submissions import NewJob
from tests.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("broker_kind", ["rabbitmq"])]


async def test_another_users_job_is_not_found(stack: Stack) -> None:
    job = await stack.submit("system.echo", {"a": 1})
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
    ]:
        response = await stack.client.request(
            method, path, headers=stack.headers(stack.other_token)
        )
        assert response.status == 404, path
        assert response.content_type == "application/problem+json"
    admin_view = await stack.get(job["id"], token=stack.admin_token)
    assert admin_view["id"] == job["id"]


async def test_listing_pages_by_cursor_and_filters(stack: Stack) -> None:
    stack.stop_worker()  # keep them queued
    ids = [(await stack.submit("system.echo", {"i": i}))["id"] for i in range(5)]
    await stack.submit("system.sleep", {"seconds": 1}, token=stack.other_token)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await stack.client.get("/v1/jobs", params=params, headers=stack.headers())
        page = await response.json()
        assert response.status == 200, page
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            assert "Link" not in response.headers
            break
        assert 'rel="next"' in response.headers["Link"]
    assert seen == list(reversed(ids))  # newest first, the other user's job left out

    response = await stack.client.get(
        "/v1/jobs",
        params={"type": "system.sleep", "status": "queued"},
        headers=stack.headers(stack.admin_token),
    )
    page = await response.json()
    assert [item["type"] for item in page["items"]] == ["system.sleep"]


async def test_listing_with_include_reads_the_content_in_batches(stack: Stack) -> None:
    stack.stop_worker()  # keep them queued
    ids = [(await stack.submit("system.echo", {"i": i}))["id"] for i in range(12)]
    seen: list[dict[str, Any]] = []
    params = {"limit": "5", "include": "payload,result"}
    while True:
        response = await stack.client.get("/v1/jobs", params=params, headers=stack.headers())
        page = await response.json()
        assert response.status == 200, page
        seen += page["items"]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert [item["id"] for item in seen] == list(reversed(ids))
    assert [item["payload"] for item in seen] == [{"i": i} for i in reversed(range(12))]
    assert all(item["result"] is None for item in seen)
    response = await stack.client.get("/v1/jobs", headers=stack.headers())
    assert not {"payload", "result"} & set((await response.json())["items"][0])


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ({"status": "bogus"}, 422, "status"),
        ({"limit": "0"}, 422, "limit"),
        ({"limit": "100000"}, 422, "limit"),
        ({"cursor": "!!!"}, 400, "cursor"),
    ],
)
async def test_bad_list_parameters_are_named(
    stack: Stack, query: dict[str, str], status: int, field: str
) -> None:
    response = await stack.client.get("/v1/jobs", params=query, headers=stack.headers())
    body = await response.json()
    assert response.status == status, body
    assert response.content_type == "application/problem+json"
    assert body["errors"][0]["field"] == field


async def test_same_idempotency_key_and_body_returns_the_same_job(stack: Stack) -> None:
    first = await stack.submit("system.echo", {"k": 1}, **{"Idempotency-Key": "order-1"})
    response = await stack.client.post(
        "/v1/jobs",
        json={"type": "system.echo", "payload": {"k": 1}},
        headers=stack.headers(**{"Idempotency-Key": "order-1"}),
    )
    again = await response.json()
    assert response.status == 202
    assert response.headers["Idempotent-Replayed"] == "true"
    assert again["id"] == first["id"]
    # the key is the owner's: another user's same key is another job
    other = await stack.submit(
        "system.echo", {"k": 1}, token=stack.other_token, **{"Idempotency-Key": "order-1"}
    )
    assert other["id"] != first["id"]


async def test_idempotency_key_reused_with_another_body_is_422(stack: Stack) -> None:
    await stack.submit("system.echo", {"k": 1}, **{"Idempotency-Key": "order-2"})
    body = await stack.submit("system.echo", {"k": 2}, expect=422, **{"Idempotency-Key": "order-2"})
    assert body["errors"][0]["field"] == "Idempotency-Key"


async def test_concurrent_request_with_the_same_key_is_409(stack: Stack, database_url: str) -> None:
    member_id = (await stack.submit("system.echo", {}))["owner_id"]
    digest = hashlib.sha256(f"{member_id}:order-3".encode()).digest()
    lock_id = int.from_bytes(digest[:8], "big", signed=True)
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as holder:  # another request holding the key, in flight
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
        body = await stack.submit("system.echo", {}, expect=409, **{"Idempotency-Key": "order-3"})
        assert body["status"] == 409
    done = await stack.submit("system.echo", {}, **{"Idempotency-Key": "order-3"})
    assert done["idempotency_key"] == "order-3"


async def test_cancel_queued_job_is_immediate_and_it_never_runs(stack: Stack) -> None:
    stack.stop_worker()
    job = await stack.submit("system.echo", {})
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    stack.start_worker()
    stack.broker.join("system", timeout=10_000)
    assert stack.worker is not None
    stack.worker.join()
    row = stack.row(job["id"])
    assert (row.status, row.attempts) == ("cancelled", 0)
    again = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert again.status == 200  # cancelling twice is harmless


async def test_cancel_finished_job_is_409(stack: Stack) -> None:
    job = await stack.submit("system.echo", {}, expect=200, Prefer="wait=10")
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert response.status == 409


async def test_wait_returns_when_the_status_changes(stack: Stack) -> None:
    job = await stack.submit("system.sleep", {"seconds": 0.5, "steps": 1})
    changed = await stack.get(job["id"], wait="20")
    assert changed["status"] in ("running", "succeeded")
    finished = await stack.get(job["id"], wait="20", until="finished")
    assert finished["status"] == "succeeded"
    response = await stack.client.get(
        f"/v1/jobs/{job['id']}", params={"wait": "61"}, headers=stack.headers()
    )
    assert response.status == 422


async def test_server_sent_events_stream_the_history_and_end(stack: Stack) -> None:
    job = await stack.submit("system.sleep", {"seconds": 0.3, "steps": 3})
    response = await stack.client.get(f"/v1/jobs/{job['id']}/events", headers=stack.headers())
    assert response.headers["Content-Type"] == "text/event-stream"
    text = await asyncio.wait_for(response.text(), 20)
    kinds = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event:")]
    assert kinds.count("progress") == 3
    assert '"status": "succeeded"' in text.splitlines()[-2]


async def test_time_limit_stops_a_job_with_a_clear_error(stack: Stack) -> None:
    job = await stack.submit("testing.busy", {"seconds": 30})
    done = await stack.wait_for(job["id"], "failed")
    error = {key: done["error"][key] for key in ("type", "message")}
    assert error == {"type": "TimeLimitExceeded", "message": "time limit of 0.5s exceeded"}


async def test_duplicate_message_for_a_finished_job_is_skipped(stack: Stack) -> None:
    job = await stack.submit("system.echo", {"d": 1}, expect=200, Prefer="wait=10")
    stack.broker.enqueue(to_dramatiq(JobMessage(uuid.UUID(job["id"]), "system.echo", "system")))
    stack.broker.join("system", timeout=10_000)
    assert stack.worker is not None
    stack.worker.join()
    row = stack.row(job["id"])
    assert (row.status, row.attempts) == ("succeeded", 1)


async def test_committed_but_unpublished_job_is_swept_and_runs(stack: Stack) -> None:
    owner = uuid.UUID((await stack.submit("system.echo", {}))["owner_id"])
    new = NewJob("system.echo", "system", {"swept": True}, max_retries=0, owner_id=owner)
    job, _ = submissions.write(stack.db, new)  # committed, never published: the web process died
    done = await stack.wait_for(str(job.id), "succeeded")
    assert done["result"] == {"swept": True}


async def test_job_of_a_dead_worker_is_requeued_by_the_reconciler(stack: Stack) -> None:
    stack.stop_worker()
    job = await stack.submit("system.echo", {"r": 1})  # no retries: a lost worker is no failure
    with stack.db.begin() as session:  # as if a worker claimed it and died
        session.execute(
            update(jobs_t)
            .where(jobs_t.c.id == uuid.UUID(job["id"]))
            .values(
                status="running", attempts=1, lease_expires_at=utcnow() - dt.timedelta(seconds=1)
            )
        )
    stack.start_worker()
    done = await stack.wait_for(job["id"], "succeeded", "failed")
    assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 2, {"r": 1})
    assert stack.row(job["id"]).worker_losses == 1


async def test_job_that_keeps_killing_its_worker_ends_failed(stack: Stack) -> None:
    stack.stop_worker()
    job = await stack.submit("system.echo", {})
    with stack.db.begin() as session:  # its third attempt died with the worker, too
        session.execute(
            update(jobs_t)
            .where(jobs_t.c.id == uuid.UUID(job["id"]))
            .values(
                status="running",
                attempts=3,
                worker_losses=stack.settings.max_worker_losses,
                lease_expires_at=utcnow() - dt.timedelta(seconds=1),
            )
        )
    done = await stack.wait_for(job["id"], "failed")
    assert done["error"]["type"] == "WorkerLost"
    with stack.db() as session:
        failed_events = session.scalar(
            select(func.count()).where(
                JobEvent.job_id == uuid.UUID(job["id"]), JobEvent.status == "failed"
            )
        )
    assert failed_events == 1


async def test_readiness_checks_every_dependency(stack: Stack) -> None:
    response = await stack.client.get("/readyz")
    body = await response.json()
    assert response.status == 200, body
    assert body["checks"] == {"database": "ok", "schema": "ok", "broker": "ok", "redis": "ok"}


async def test_metrics_count_requests_and_jobs(stack: Stack) -> None:
    job = await stack.submit("system.echo", {}, expect=200, Prefer="wait=10")
    await stack.get(job["id"])
    text = await (await stack.client.get("/metrics")).text()
    assert (
        'conveyor_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"}' in text
    )
    assert 'conveyor_jobs_finished_total{status="succeeded",type="system.echo"} 1.0' in text


async def test_database_outage_answers_503_with_retry_after(stack: Stack, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    settings = stack.settings.model_copy(  # a database that refuses connections
        update={
            "database_url": "postgresql+psycopg://postgres@127.0.0.1:1/conveyor",
            "broker_url": "stub://",
        }
    )
    container = bootstrap.Container(
        settings, bootstrap.ProcessRole.WEB, announcements=MemoryAnnouncements()
    )
    client = await aiohttp_client(create_app(container, sweeper=False))
    response = await client.get("/v1/jobs", headers=stack.headers())
    body = await response.json()
    assert response.status == 503, body
    assert response.headers["Retry-After"] == "5"
    assert response.content_type == "application/problem+json"
    await client.close()
    container.close()
