"""The access log: one line per request at its end (a long-poll's and an event stream's
too), with its route template, status, duration, request id and remote address as fields;
`CONVEYOR_ACCESS_LOG=false` turns it off."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor.announcements import MemoryAnnouncements
from conveyor.db import make_engine, make_sessionmaker
from tests import stack as stacks
from tests.conftest import _stack
from tests.stack import Stack

ACCESS = "conveyor.access"


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS]


async def test_a_request_is_logged_once_with_its_route_and_timing(
    embedded_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = embedded_stack
    stack.stop_worker()  # the job stays queued: the long-poll waits its full time
    job = await stack.submit("system.echo", {"a": 1})
    caplog.clear()
    caplog.set_level(logging.INFO, logger=ACCESS)
    response = await stack.client.get(
        f"/v1/jobs/{job['id']}",
        params={"wait": "0.3"},
        headers=stack.headers(**{"X-Request-Id": "req-123"}),
    )
    assert response.status == 200
    (record,) = _access(caplog)
    fields: Any = record
    assert record.levelno == logging.INFO
    assert (fields.method, fields.route, fields.status) == ("GET", "/v1/jobs/{job_id}", 200)
    assert fields.path == f"/v1/jobs/{job['id']}"
    assert fields.duration_ms >= 300
    assert fields.request_id == "req-123"
    assert fields.remote == "127.0.0.1"
    assert record.getMessage().startswith(f"GET /v1/jobs/{job['id']} 200 ")


async def test_an_event_stream_and_an_error_are_logged_at_their_end(
    embedded_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = embedded_stack
    job = await stack.submit("system.sleep", {"seconds": 0.3, "steps": 3})
    caplog.set_level(logging.INFO, logger=ACCESS)
    caplog.clear()
    response = await stack.client.get(f"/v1/jobs/{job['id']}/events", headers=stack.headers())
    await response.read()  # the stream ends with the job
    missing = await stack.client.get("/v1/nowhere", headers=stack.headers())
    assert missing.status == 404
    records: list[Any] = _access(caplog)
    assert [(r.route, r.status) for r in records] == [
        ("/v1/jobs/{job_id}/events", 200),
        ("unmatched", 404),
    ]
    assert records[0].duration_ms >= 250


@pytest.fixture
async def quiet_stack(aiohttp_client: Any, sqlite_url: str) -> AsyncIterator[Stack]:
    """The embedded stack with CONVEYOR_ACCESS_LOG=false."""
    settings = stacks.test_settings(
        database_url=sqlite_url, broker_url="stub://", redis_url=None, access_log=False
    )
    engine = make_engine(sqlite_url, pool_size=10)
    async for stack in _stack(
        settings, make_sessionmaker(engine), MemoryAnnouncements(), aiohttp_client
    ):
        yield stack
    engine.dispose()


async def test_the_setting_turns_the_access_log_off(
    quiet_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    await quiet_stack.submit("system.echo", {"a": 1})
    assert _access(caplog) == []
