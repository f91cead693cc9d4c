"""On the wire, through the server of `conveyor web` and `conveyor dev`: requests the parser
refuses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from tests.unit.http.wire import Served, exchange, served_app

#: A bearer token's start that must never come back in an answer or a log line.
SECRET = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2VuLXN0YXJ0"


@pytest.fixture
async def served(sqlite_url: str) -> AsyncIterator[Served]:
    async with served_app(sqlite_url) as served:
        yield served


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
