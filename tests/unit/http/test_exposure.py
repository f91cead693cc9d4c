"""What answers give away: security headers on every answer and no server version, a
readiness probe that names failing checks without their (internal) errors, and no welcome
for a token that lives too long."""

from __future__ import annotations

import logging
from collections.abc import Callable

import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from conveyor.models.migrate import head
from conveyor.services.auth import TokenConfig
from tests.stack import Stack


async def test_every_answer_says_nosniff_no_store_and_no_server_version(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {"a": 1})
    answers = [
        await stack.client.get("/healthz"),
        await stack.client.get("/openapi.json"),
        await stack.client.get("/metrics"),
        await stack.client.get("/v1/jobs"),  # 401
        await stack.client.get("/v1/jobs", headers=stack.headers()),
        await stack.client.get(f"/v1/jobs/{job['id']}", headers=stack.headers()),
        await stack.client.post("/v1/jobs", json={"type": "nope"}, headers=stack.headers()),
        await stack.client.get("/v1/nope", headers=stack.headers()),  # 404
        await stack.client.get("/nope"),  # 404 of the root app
        await stack.client.get("/admin/", headers=stack.headers(stack.admin_token)),
    ]
    for response in answers:
        where = (response.method, str(response.url), response.status)
        assert response.headers["X-Content-Type-Options"] == "nosniff", where
        assert response.headers["Cache-Control"] == "no-store", where
        assert response.headers["Server"] == "conveyor", where


async def test_the_event_stream_keeps_its_own_cache_policy(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {"a": 1}, expect=200, Prefer="wait=5")
    async with stack.client.get(f"/v1/jobs/{job['id']}/events", headers=stack.headers()) as r:
        assert r.status == 200
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Server"] == "conveyor"


def _failing(message: str) -> Callable[[], None]:
    def check() -> None:
        raise OperationalError("SELECT 1", {}, Exception(message))

    return check


async def test_readyz_names_the_failing_checks_and_logs_their_errors_once(
    embedded_stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret_host = 'connection to server at "db.internal.example" (10.1.2.3), port 5432 failed'
    checks = {
        "database": _failing(secret_host),
        "broker": _failing("AMQPConnectionError: amqp://conveyor:hunter2@mq.internal.example"),
        "redis": lambda: None,
    }
    monkeypatch.setattr(embedded_stack.container, "readiness_checks", lambda: checks)
    caplog.set_level(logging.INFO)
    for _ in range(3):  # a load balancer probes again and again
        response = await embedded_stack.client.get("/readyz")
        assert response.status == 503
        text = await response.text()
        assert await response.json() == {
            "status": "unavailable",
            "checks": {"database": "failed", "broker": "failed", "redis": "ok"},
        }
        for secret in ("internal.example", "10.1.2.3", "hunter2", "OperationalError"):
            assert secret not in text

    # Each failure is logged once, with its error, when it starts: not at every probe.
    lines = [r.getMessage() for r in caplog.records if r.name == "conveyor.http.system"]
    assert len(lines) == 2, lines
    assert any("database" in line and "db.internal.example" in line for line in lines)
    assert any("broker" in line and "mq.internal.example" in line for line in lines)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    checks["broker"] = lambda: None
    caplog.clear()
    response = await embedded_stack.client.get("/readyz")
    assert (await response.json())["checks"]["broker"] == "ok"
    lines = [r.getMessage() for r in caplog.records if r.name == "conveyor.http.system"]
    assert lines == ["readiness check broker passes again"]


async def test_readyz_is_ok_when_every_check_passes(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "schema": "ok", "broker": "ok", "redis": "ok"},
    }


async def test_readyz_fails_while_the_schema_is_behind_the_code(embedded_stack: Stack) -> None:
    with embedded_stack.db.begin() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    response = await embedded_stack.client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["checks"]["schema"] == "failed"

    with embedded_stack.db.begin() as session:
        session.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head()})
    response = await embedded_stack.client.get("/readyz")
    assert response.status == 200


async def test_a_token_that_expires_in_the_year_9999_is_unauthorized(embedded_stack: Stack) -> None:
    stack = embedded_stack
    claims = jwt.decode(stack.member_token, options={"verify_signature": False})
    signer = TokenConfig.of(stack.settings).keys.signer
    forever = signer.sign({**claims, "exp": 253402300799}, "at+jwt")
    response = await stack.client.get("/v1/jobs", headers=stack.headers(forever))
    assert response.status == 401
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="conveyor", error="invalid_token"'
    assert "lives longer" in (await response.json())["detail"]
