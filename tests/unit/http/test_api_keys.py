"""API keys over HTTP: shown once and kept hashed, narrowed to their scopes, refused once
revoked or expired, and their last use recorded without a write per request."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

import pytest
from sqlalchemy import select, update

from conveyor.db import transaction
from conveyor.errors import ConflictError
from conveyor.models import ApiKey, AuditEvent, User
from conveyor.models.base import utcnow
from conveyor.services import api_keys
from conveyor.services.audit import NOBODY
from conveyor.services.auth import TokenConfig, issue_token
from tests.stack import Stack
from tests.unit.http.test_errors import fields, problem


def _user_id(stack: Stack, email: str) -> uuid.UUID:
    with stack.db() as session:
        return session.scalars(select(User.id).where(User.email == email)).one()


async def _create(
    stack: Stack, token: str | None = None, *, expect: int = 201, **body: Any
) -> dict[str, Any]:
    body = {"name": "ci", "scopes": ["jobs:read"], **body}
    response = await stack.client.post("/v1/me/api-keys", json=body, headers=stack.headers(token))
    answer = await response.json()
    assert response.status == expect, answer
    return answer  # type: ignore[no-any-return]


def _row(stack: Stack, key_id: str) -> ApiKey:
    with stack.db() as session:
        row = session.get(ApiKey, uuid.UUID(key_id))
    assert row is not None
    return row


async def test_a_key_is_shown_once_and_kept_hashed(embedded_stack: Stack) -> None:
    stack = embedded_stack
    created = await _create(stack, scopes=["jobs:read", "jobs:write"], expires_in_days=30)
    key = created["key"]
    assert key.startswith(created["prefix"] + "_") and created["prefix"].startswith("cvk_")
    row = _row(stack, created["id"])
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert row.expires_at is not None and row.expires_at > utcnow() + dt.timedelta(days=29)

    listed = await stack.client.get("/v1/me/api-keys", headers=stack.headers())
    items = (await listed.json())["items"]
    assert [item["id"] for item in items] == [created["id"]]
    assert "key" not in items[0] and key not in await listed.text()
    with stack.db() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "api_key_created")
        ).one()
    assert event.details["prefix"] == created["prefix"] and key not in str(event.details)


async def test_a_key_acts_only_within_its_scopes(embedded_stack: Stack) -> None:
    stack = embedded_stack
    key = (await _create(stack, scopes=["jobs:read"]))["key"]
    assert (await stack.client.get("/v1/jobs", headers=stack.headers(key))).status == 200
    write = await stack.client.post(
        "/v1/jobs", json={"type": "demo.echo", "payload": {}}, headers=stack.headers(key)
    )
    assert "jobs:write" in (await problem(write, 403))["detail"]
    response = await stack.client.post(
        "/v1/me/api-keys",
        json={"name": "more", "scopes": ["jobs:read"]},
        headers=stack.headers(key),
    )
    assert "API keys may not" in (await problem(response, 403))["detail"]


async def test_scopes_must_be_known_and_usable_by_the_role(embedded_stack: Stack) -> None:
    stack = embedded_stack
    unknown = await _create(stack, expect=422, scopes=["jobs:read", "jobs:everything"])
    assert fields(unknown) == ["scopes.1"]
    beyond = await _create(stack, expect=422, scopes=["operations"])
    assert fields(beyond) == ["scopes.0"]
    both = await _create(stack, expect=422, expires_in_days=1, expires_at="2100-01-01T00:00:00Z")
    assert fields(both) == ["expires_in_days"]
    past = await _create(stack, expect=422, expires_at="2000-01-01T00:00:00Z")
    assert fields(past) == ["expires_at"]


async def test_revoked_expired_and_disabled_users_keys_are_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    revoked = await _create(stack)
    assert (await stack.client.get("/v1/jobs", headers=stack.headers(revoked["key"]))).status == 200
    response = await stack.client.delete(
        f"/v1/me/api-keys/{revoked['id']}", headers=stack.headers()
    )
    assert response.status == 204
    refused = await stack.client.get("/v1/jobs", headers=stack.headers(revoked["key"]))
    assert "revoked" in (await problem(refused, 401))["detail"]
    again = await stack.client.delete(f"/v1/me/api-keys/{revoked['id']}", headers=stack.headers())
    await problem(again, 404)

    expired = await _create(stack)
    with transaction(stack.db) as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == uuid.UUID(expired["id"]))
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    refused = await stack.client.get("/v1/jobs", headers=stack.headers(expired["key"]))
    assert "expired" in (await problem(refused, 401))["detail"]

    # made without a request, so no web process has its user cached
    _, other_key = api_keys.create(
        stack.db,
        _user_id(stack, "other@example.com"),
        api_keys.NewKey("ci", ["jobs:read"]),
        max_keys=5,
        client=NOBODY,
    )
    with transaction(stack.db) as session:
        session.execute(update(User).where(User.email == "other@example.com").values(active=False))
    refused = await stack.client.get("/v1/jobs", headers=stack.headers(other_key))
    assert "deactivated" in (await problem(refused, 401))["detail"]
    unknown = await stack.client.get("/v1/jobs", headers=stack.headers("cvk_00000000_nope"))
    await problem(unknown, 401)


async def test_another_users_key_cannot_be_revoked(embedded_stack: Stack) -> None:
    stack = embedded_stack
    theirs = await _create(stack, stack.other_token)
    response = await stack.client.delete(f"/v1/me/api-keys/{theirs['id']}", headers=stack.headers())
    await problem(response, 404)
    assert _row(stack, theirs["id"]).revoked_at is None


async def test_the_last_use_is_recorded_at_most_once_a_minute(embedded_stack: Stack) -> None:
    stack = embedded_stack
    created = await _create(stack)
    assert _row(stack, created["id"]).last_used_at is None
    assert (await stack.client.get("/v1/jobs", headers=stack.headers(created["key"]))).status == 200
    first = _row(stack, created["id"]).last_used_at
    assert first is not None
    assert (await stack.client.get("/v1/jobs", headers=stack.headers(created["key"]))).status == 200
    assert _row(stack, created["id"]).last_used_at == first


async def test_a_role_that_must_use_mfa_makes_keys_only_from_a_strong_sign_in(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    admin_id = _user_id(stack, "admin@example.com")
    weak = issue_token(TokenConfig.of(stack.settings), admin_id, amr=("pwd",))
    refused = await stack.client.post(
        "/v1/me/api-keys",
        json={"name": "ops", "scopes": ["jobs:read"]},
        headers=stack.headers(weak),
    )
    assert "second factor" in (await problem(refused, 403))["detail"]
    # the stack's admin token was issued on the server (`cli`): strong
    created = await _create(stack, stack.admin_token, scopes=["operations", "users:read"])
    assert created["scopes"] == ["operations", "users:read"]


def test_a_user_holds_at_most_so_many_keys(embedded_stack: Stack) -> None:
    stack = embedded_stack
    member_id = _user_id(stack, "member@example.com")
    new = api_keys.NewKey("ci", ["jobs:read"])
    api_keys.create(stack.db, member_id, new, max_keys=1, client=NOBODY)
    with pytest.raises(ConflictError, match="revoke one first"):
        api_keys.create(stack.db, member_id, new, max_keys=1, client=NOBODY)


async def test_a_prefix_already_taken_is_drawn_again(
    embedded_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = embedded_stack
    first = await _create(stack)
    assert len(first["prefix"]) == len("cvk_") + api_keys.PREFIX_HEX
    drawn = [(f"{first['prefix']}_another-secret", first["prefix"])]
    draw = api_keys.new_key
    monkeypatch.setattr(api_keys, "new_key", lambda: drawn.pop() if drawn else draw())
    second = await _create(stack)
    assert not drawn and second["prefix"] != first["prefix"]
    assert (await stack.client.get("/v1/jobs", headers=stack.headers(second["key"]))).status == 200


@pytest.mark.parametrize("expires_at", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
async def test_an_expiry_without_a_utc_time_is_refused(
    embedded_stack: Stack, expires_at: str
) -> None:
    answer = await _create(embedded_stack, expect=422, expires_at=expires_at)
    assert fields(answer) == ["expires_at"]
