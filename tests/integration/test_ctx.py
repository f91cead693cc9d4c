"""What a job reaches through ctx, over the real stack: planned retries, permanent errors,
the shared HTTP client of an async job and the addresses it refuses. Both brokers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

import tests.jobs  # noqa: F401  (test-only job types)
from conveyor.models.base import utcnow
from tests.stack import Stack
from tests.unit.local_http import LocalHttpServer, local_http_server

pytestmark = pytest.mark.integration


@pytest.fixture
def stack_settings() -> dict[str, Any]:
    return {"outbound_allow_hosts": "127.0.0.1"}  # the local server, and nothing else


@pytest.fixture
def server() -> Iterator[LocalHttpServer]:
    with local_http_server() as server:
        yield server


async def test_retry_later_puts_the_job_back_that_many_seconds_ahead(stack: Stack) -> None:
    job = await stack.submit("testing.wait_and_retry", {"seconds": 30})
    retrying: dict[str, Any] = await stack.wait_for(job["id"], "retrying", "failed", within=15)
    assert retrying["status"] == "retrying", retrying
    assert retrying["attempts"] == 1
    assert retrying["error"]["type"] == "RetryLater"
    due = dt.datetime.fromisoformat(retrying["next_attempt_at"])
    assert due > utcnow() + dt.timedelta(seconds=20)
    row = stack.row(job["id"])  # measured from when the retry was recorded
    assert row.next_attempt_at is not None
    ahead = (row.next_attempt_at - row.updated_at).total_seconds()
    assert 29 <= ahead <= 31, ahead
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert (await response.json())["status"] == "cancelled"  # a waiting retry ends at once


async def test_a_permanent_exception_fails_the_job_after_one_attempt(stack: Stack) -> None:
    job = await stack.submit("testing.decline", {"card": "4000"})
    done = await stack.wait_for(job["id"], "succeeded", "failed", within=15)
    assert (done["status"], done["attempts"], done["max_retries"]) == ("failed", 1, 5)
    assert done["error"]["type"] == "CardDeclinedError"
    assert done["error"]["message"] == "card 4000 declined"
    assert "in decline\n" in done["error"]["traceback"]


async def test_an_async_job_fetches_through_the_shared_http_client(
    stack: Stack, server: LocalHttpServer
) -> None:
    results = []
    for size in (10, 2000, 0):  # one after the other: the connection is idle in between
        job = await stack.submit("testing.fetch", {"url": server.url(f"/bytes?size={size}")})
        done = await stack.wait_for(job["id"], "succeeded", "failed", within=15)
        results.append(done["result"])
    assert results == [
        {"status": 200, "bytes": 10},
        {"status": 200, "bytes": 2000},
        {"status": 200, "bytes": 0},
    ]
    assert len(set(server.peers)) == 1  # one kept-alive connection for the three jobs


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "(link-local)"),
        ("http://10.20.30.40/", "(private)"),
        ("http://[::1]/", "(loopback)"),
    ],
)
async def test_a_job_aimed_at_an_address_that_is_not_public_fails_saying_why(
    stack: Stack, url: str, reason: str
) -> None:
    job = await stack.submit("testing.fetch", {"url": url})
    done = await stack.wait_for(job["id"], "succeeded", "failed", within=15)
    assert (done["status"], done["attempts"]) == ("failed", 1)
    assert done["error"]["type"] == "DestinationRefusedError"
    assert reason in done["error"]["message"]
    assert "CONVEYOR_OUTBOUND_ALLOW_HOSTS" in done["error"]["message"]
