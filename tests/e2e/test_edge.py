"""`conveyor web` and `conveyor dev` at the edge: they serve through the guarded server
(malformed requests answered as problems, slow headers cut off), and `conveyor dev` keeps
its data private and prints a short-lived admin token."""

from __future__ import annotations

import json
import socket
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import pytest

from tests.e2e.processes import Api, Processes, environment

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 1.0
SECRET = b"eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2VuLXN0YXJ0"


def _port(api: Api) -> int:
    port = urlsplit(api.base_url).port
    assert port is not None
    return port


def _exchange(port: int, data: bytes) -> bytes:
    """Send `data` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def _seconds_until_closed(port: int, data: bytes, at_most: float) -> float | None:
    """Send `data` a byte every 0.1 s; the seconds until the server closed the connection,
    or None if it was still open after `at_most` seconds."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(0.1)
        for byte in data:
            if time.monotonic() - started > at_most:
                return None
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(1) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
            except ConnectionError:
                return time.monotonic() - started
    return None


def _check_the_guarded_server(port: int) -> None:
    raw = _exchange(
        port,
        b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SECRET + b"\x01\r\n\r\n",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400"), raw
    assert b"Content-Type: application/problem+json" in head
    assert b"Server: conveyor\r\n" in head + b"\r\n"
    assert SECRET not in raw
    assert json.loads(body)["errors"][0]["field"] == "headers"

    slow = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: " + b"a" * 200 + b"\r\n\r\n"
    closed_after = _seconds_until_closed(port, slow, at_most=HEADER_TIMEOUT + 8)
    assert closed_after is not None, "a trickling connection stayed open"
    assert closed_after < HEADER_TIMEOUT + 2


def test_conveyor_web_serves_through_the_guarded_server(
    procs: Processes, platform_env: dict[str, str]
) -> None:
    env = {**platform_env, "CONVEYOR_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT)}
    web, api = procs.web(env)
    _check_the_guarded_server(_port(api))
    output = web.output()
    assert "Traceback" not in output and SECRET.decode() not in output, output


def test_conveyor_dev_serves_through_the_guarded_server_and_keeps_its_data_private(
    procs: Processes, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = environment({"CONVEYOR_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT)})
    dev, api = procs.dev(env, project)
    _check_the_guarded_server(_port(api))
    output = dev.output()
    assert "Traceback" not in output and SECRET.decode() not in output, output

    assert api.token is not None
    claims = jwt.decode(api.token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 24 * 3600
    assert api.request("GET", "/v1/jobs")[0] == 200

    data = project / ".conveyor"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("secret_key", "conveyor.db", "conveyor.db-wal", "conveyor.db-shm"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
