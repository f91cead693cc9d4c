"""Sessions over HTTP: refresh rotates, reuse ends the session, logout and revocation stop the
access tokens; admins manage users and read the audit log."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.db import transaction
from conveyor.errors import ConflictError
from conveyor.http.keys import TOKENS
from conveyor.models import Role
from conveyor.services import sessions, users
from conveyor.services.audit import Client
from conveyor.services.users import create_user, get_by_email
from tests.stack import Stack
from tests.unit.http.test_errors import fields, problem


def sign_in(stack: Stack, email: str = "member@example.com") -> sessions.Tokens:
    user = get_by_email(stack.db, email)
    config = stack.client.app[TOKENS].config
    with transaction(stack.db) as session:
        return sessions.start(
            session,
            config,
            sessions.Lifetimes.of(stack.settings),
            session.merge(user),
            amr=["pwd"],
            client=Client("127.0.0.1", "test"),
        )


async def _json(stack: Stack, method: str, path: str, token: str, **kw: Any) -> Any:
    response = await stack.client.request(method, path, headers=stack.headers(token), **kw)
    assert response.status < 300, await response.text()
    return None if response.status == 204 else await response.json()


async def test_a_refresh_rotates_and_a_reused_token_ends_the_session(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    first = sign_in(stack)
    response = await stack.client.post(
        "/v1/auth/refresh", json={"refresh_token": first.refresh_token}
    )
    tokens = await response.json()
    assert response.status == 200, tokens
    assert tokens["token_type"] == "Bearer"
    assert (
        tokens["refresh_token"].startswith("cvr_")
        and tokens["refresh_token"] != first.refresh_token
    )
    assert tokens["session_id"] == str(first.session_id)
    await _json(stack, "GET", "/v1/me/sessions", tokens["access_token"])
    again = await stack.client.post("/v1/auth/refresh", json={"refresh_token": first.refresh_token})
    await problem(again, 401)
    # The session is ended: the newest access token of it is refused too.
    response = await stack.client.get("/v1/jobs", headers=stack.headers(tokens["access_token"]))
    assert "ended" in (await problem(response, 401))["detail"]


async def test_a_refresh_without_a_token_names_the_field(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.post("/v1/auth/refresh", json={})
    assert fields(await problem(response, 422)) == ["refresh_token"]


async def test_logout_ends_the_session_and_its_access_token(embedded_stack: Stack) -> None:
    stack = embedded_stack
    tokens = sign_in(stack)
    await _json(stack, "POST", "/v1/auth/logout", tokens.access_token, json={})
    await problem(
        await stack.client.get("/v1/jobs", headers=stack.headers(tokens.access_token)), 401
    )
    response = await stack.client.post(
        "/v1/auth/refresh", json={"refresh_token": tokens.refresh_token}
    )
    await problem(response, 401)


async def test_logout_with_a_token_of_no_session_needs_a_refresh_token_of_mine(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    response = await stack.client.post("/v1/auth/logout", json={}, headers=stack.headers())
    assert fields(await problem(response, 422)) == ["refresh_token"]
    theirs = sign_in(stack, "other@example.com")
    response = await stack.client.post(
        "/v1/auth/logout", json={"refresh_token": theirs.refresh_token}, headers=stack.headers()
    )
    assert fields(await problem(response, 422)) == ["refresh_token"]


async def test_sessions_are_listed_and_ended_one_or_all_others(embedded_stack: Stack) -> None:
    stack = embedded_stack
    here, phone, laptop = sign_in(stack), sign_in(stack), sign_in(stack)
    listed = await _json(stack, "GET", "/v1/me/sessions", here.access_token)
    assert [s["current"] for s in listed["items"]].count(True) == 1
    assert {s["id"] for s in listed["items"]} == {str(t.session_id) for t in (here, phone, laptop)}
    assert listed["items"][0]["amr"] == ["pwd"]
    await _json(stack, "DELETE", f"/v1/me/sessions/{phone.session_id}", here.access_token)
    await problem(
        await stack.client.get("/v1/jobs", headers=stack.headers(phone.access_token)), 401
    )
    ended = await _json(stack, "DELETE", "/v1/me/sessions", here.access_token)
    assert ended == {"ended": 1}
    await problem(
        await stack.client.get("/v1/jobs", headers=stack.headers(laptop.access_token)), 401
    )
    await _json(stack, "GET", "/v1/jobs", here.access_token)


async def test_admins_change_roles_and_disable_users_but_never_the_last_admin(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    admin = get_by_email(stack.db, "admin@example.com")
    member = get_by_email(stack.db, "member@example.com")
    tokens = sign_in(stack)
    page = await _json(stack, "GET", "/v1/users?role=member&limit=1", stack.admin_token)
    assert len(page["items"]) == 1 and page["next_cursor"]
    changed = await _json(
        stack, "PATCH", f"/v1/users/{member.id}", stack.admin_token, json={"role": "operator"}
    )
    assert changed["role"] == "operator"
    changed = await _json(
        stack, "PATCH", f"/v1/users/{member.id}", stack.admin_token, json={"active": False}
    )
    assert changed["active"] is False
    await problem(
        await stack.client.get("/v1/jobs", headers=stack.headers(tokens.access_token)), 401
    )
    response = await stack.client.patch(
        f"/v1/users/{admin.id}", json={"role": "member"}, headers=stack.headers(stack.admin_token)
    )
    assert fields(await problem(response, 409)) == ["role"]
    response = await stack.client.patch(
        f"/v1/users/{member.id}", json={"role": "boss"}, headers=stack.headers(stack.admin_token)
    )
    await problem(response, 422)
    events = await _json(
        stack, "GET", f"/v1/audit-events?subject_id={member.id}", stack.admin_token
    )
    actions = [e["action"] for e in events["items"]]
    assert actions[:2] == ["user_disabled", "role_changed"]
    assert events["items"][1]["details"] == {"from": "member", "to": "operator"}


async def test_two_admins_demoting_each_other_leave_one_admin(embedded_stack: Stack) -> None:
    stack = embedded_stack
    admin = get_by_email(stack.db, "admin@example.com")
    second = create_user(stack.db, "second@example.com", Role.ADMIN)
    users.update(stack.db, admin.id, second.id, role=Role.MEMBER)
    # `second` still acted with an admin's token, cached a few seconds: refused all the same.
    with pytest.raises(ConflictError, match="last active admin"):
        users.update(stack.db, second.id, admin.id, role=Role.MEMBER)
