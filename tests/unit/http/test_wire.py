"""On the wire, through the server of `conveyor web` and `conveyor dev`: requests the parser
refuses, slow headers and bodies, and clients that leave mid-request."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest

from tests.stack import Stack, wait_until
from tests.unit.http.wire import Connection, Served, exchange, request, served_app

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
#: How late a close may come after its time limit on a busy machine.
SLACK = 2.0
#: A bearer token's start that must never come back in an answer or a log line.
SECRET = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2VuLXN0YXJ0"


@pytest.fixture
async def served(sqlite_url: str) -> AsyncIterator[Served]:
    async with served_app(
        sqlite_url,
        http_header_timeout_seconds=HEADER_TIMEOUT,
        http_body_timeout_seconds=BODY_TIMEOUT,
    ) as served:
        yield served


def submission(served: Served, body: bytes, *, length: int | None = None, **headers: str) -> bytes:
    """The head of a POST /v1/jobs (and `body`) that announces `length` bytes of body."""
    return request(
        "POST",
        "/v1/jobs",
        headers={
            "Authorization": f"Bearer {served.token}",
            "Content-Type": "application/json",
            "Content-Length": str(len(body) if length is None else length),
            **headers,
        },
        body=body,
    )


ECHO = json.dumps({"type": "system.echo", "payload": {"hello": "world"}}).encode()

# --- requests aiohttp's parser refuses ---------------------------------------------------------

MALFORMED = {
    "a header over 8 KB": (
        b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"A" * 9000
        + b"\r\n\r\n",
        "headers",
    ),
    "a control character in a header": (
        b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"\x01\r\n\r\n",
        "headers",
    ),
    "an unknown method": (
        b"FROB /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"\r\n\r\n",
        "method",
    ),
    "TLS on the plain port": (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
        "method",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_request_the_parser_refuses_is_a_problem_that_echoes_nothing_in_one_log_line(
    served: Served, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    data, part = MALFORMED[case]
    caplog.set_level(logging.DEBUG)
    answer = await exchange(served.port, data)
    assert answer.status == 400, answer.raw
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.headers["server"] == "conveyor"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert (body["status"], body["title"]) == (400, "Bad request")
    assert [error["field"] for error in body["errors"]] == [part]
    assert SECRET.encode() not in answer.raw
    assert b"AAAA" not in answer.raw and b"\\x" not in answer.raw

    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.INFO
    assert records[0].exc_info is None
    assert SECRET not in caplog.text
    assert served.sample("conveyor_http_rejected_total", reason="malformed") == 1


# --- time limits on receiving a request ------------------------------------------------------


async def test_a_connection_that_trickles_its_headers_is_closed_within_the_bound(
    served: Served,
) -> None:
    connection = await Connection.open(served.port)
    try:
        head = request("GET", "/v1/jobs", headers={"Authorization": f"Bearer {served.token}"})
        await connection.trickle(head, every=0.1, at_most=HEADER_TIMEOUT + 5)
        answer = connection.answer()
        assert answer.closed_after is not None, "still open after trickling for 6 s"
        assert answer.closed_after < HEADER_TIMEOUT + SLACK
        assert answer.raw == b""  # closed, not answered
    finally:
        await connection.close()
    assert served.sample("conveyor_http_rejected_total", reason="header_timeout") == 1


async def test_a_connection_that_sends_nothing_is_closed_within_the_bound(served: Served) -> None:
    connection = await Connection.open(served.port)
    try:
        assert await connection.wait_closed(HEADER_TIMEOUT + SLACK)
    finally:
        await connection.close()


async def test_two_hundred_slow_loris_connections_are_all_closed_within_the_bound(
    served: Served,
) -> None:
    connections = [await Connection.open(served.port) for _ in range(200)]
    try:
        head = request("GET", "/healthz")
        await asyncio.gather(
            *(c.trickle(head, every=0.5, at_most=HEADER_TIMEOUT + 5) for c in connections)
        )
        late = [c.answer().closed_after for c in connections]
        assert all(t is not None and t < HEADER_TIMEOUT + SLACK + 1 for t in late), late
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    # The server still answers at once.
    answer = await exchange(served.port, request("GET", "/healthz"))
    assert answer.status == 200


async def test_the_next_request_on_a_kept_alive_connection_must_also_come_in_time(
    served: Served,
) -> None:
    connection = await Connection.open(served.port)
    try:
        connection.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(HEADER_TIMEOUT + 0.5)  # idle between requests: keep-alive's business
        assert not connection.closed
        assert connection.answer().raw.startswith(b"HTTP/1.1 200")
        await connection.trickle(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", every=0.1, at_most=HEADER_TIMEOUT + 5
        )
        started = connection.opened + HEADER_TIMEOUT + 0.5
        assert connection.closed_at is not None and connection.closed_at - started < (
            HEADER_TIMEOUT + SLACK
        )
    finally:
        await connection.close()


async def test_a_body_that_trickles_is_answered_408_and_the_connection_closed(
    served: Served,
) -> None:
    connection = await Connection.open(served.port)
    try:
        connection.send(submission(served, ECHO[:10], length=len(ECHO)))
        await connection.trickle(ECHO[10:], every=0.1, at_most=BODY_TIMEOUT + 5)
        answer = connection.answer()
        assert answer.closed_after is not None, "still open after trickling for 6 s"
        assert answer.closed_after < BODY_TIMEOUT + SLACK
        assert answer.status == 408, answer.raw
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.headers["connection"] == "close"
        assert answer.json()["status"] == 408
    finally:
        await connection.close()
    assert served.sample(
        "conveyor_http_requests_total", route="/v1/jobs", method="POST", status="408"
    )


async def test_a_body_in_pieces_within_the_bound_is_accepted_even_if_the_answer_is_slow(
    served: Served,
) -> None:
    connection = await Connection.open(served.port)
    try:
        # No worker runs: `Prefer: wait=` holds the answer past the body's time limit.
        connection.send(submission(served, ECHO[:10], length=len(ECHO), Prefer="wait=2"))
        await asyncio.sleep(0.3)
        connection.send(ECHO[10:])
        assert await connection.wait_closed(10)
        assert connection.answer().status == 202, connection.answer().raw
    finally:
        await connection.close()


# --- clients that leave ------------------------------------------------------------------------


async def test_a_client_that_leaves_while_sending_its_body_is_counted_apart_and_logged_at_info(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    connection = await Connection.open(served.port)
    connection.send(submission(served, ECHO[:10], length=len(ECHO)))
    await asyncio.sleep(0.2)
    await connection.close()

    def counted() -> float:
        return served.sample(
            "conveyor_http_requests_total", route="/v1/jobs", method="POST", status="499"
        )

    await asyncio.to_thread(wait_until, counted, 5)
    assert not served.sample(
        "conveyor_http_requests_total", route="/v1/jobs", method="POST", status="500"
    )
    assert [r.levelname for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("client closed the connection" in r.getMessage() for r in caplog.records)


async def test_the_openapi_document_states_the_408_of_operations_with_a_body(
    embedded_stack: Stack,
) -> None:
    document = await (await embedded_stack.client.get("/openapi.json")).json()
    submit = document["paths"]["/v1/jobs"]["post"]
    assert "408" in submit["responses"]
    assert "30 seconds" in submit["requestBody"]["description"]
    assert "408" not in document["paths"]["/v1/jobs"]["get"]["responses"]
