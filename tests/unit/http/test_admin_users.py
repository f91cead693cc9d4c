"""The users and roles pages: the list and its filters, a user's page, and the forms that
change a role, deactivate an account and sign it out everywhere, each audited."""

from __future__ import annotations

import html
import re
import uuid

import pytest
from aiohttp import ClientResponse
from sqlalchemy import select

from conveyor.models import AuditEvent, Role
from conveyor.services import api_keys
from conveyor.services.api_keys import NewKey
from conveyor.services.audit import NOBODY
from conveyor.services.auth import TokenConfig, issue_token
from conveyor.services.users import create_user, get_by_email
from tests.stack import Stack
from tests.unit.http.test_sessions import sign_in


async def page(response: ClientResponse, status: int = 200) -> str:
    """The HTML page of `response`, unescaped, after checking its status."""
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"].startswith("text/html")
    assert text.startswith("<!doctype html>")
    return html.unescape(text)


def next_link(text: str) -> str | None:
    found = re.search(r'href="([^"]+)" rel="next"', text)
    return found and found.group(1)


def operator_token(stack: Stack) -> str:
    operator = create_user(stack.db, "operator@example.com", Role.OPERATOR)
    return issue_token(TokenConfig.of(stack.settings), operator.id)


def events(stack: Stack, action: str) -> list[AuditEvent]:
    with stack.db() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def emails_in(text: str) -> list[str]:
    return re.findall(r'<a href="/admin/users/[0-9a-f-]+">([^<]+@example\.com)</a>', text)


async def test_an_admin_lists_users_newest_first(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.get("/admin/users", headers=stack.headers(stack.admin_token))
    text = await page(response)
    assert "<h1>Users and roles</h1>" in text
    assert emails_in(text) == ["other@example.com", "member@example.com", "admin@example.com"]
    assert 'aria-current="page">Users</a>' in text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("role=admin", ["admin@example.com"]),
        ("role=member&active=true", ["other@example.com", "member@example.com"]),
        ("active=false", []),
        ("email=OTH", ["other@example.com"]),
        ("email=&role=&active=", ["other@example.com", "member@example.com", "admin@example.com"]),
    ],
)
async def test_the_list_filters_by_role_status_and_email(
    embedded_stack: Stack, query: str, expected: list[str]
) -> None:
    stack = embedded_stack
    response = await stack.client.get(
        f"/admin/users?{query}", headers=stack.headers(stack.admin_token)
    )
    text = await page(response)
    assert emails_in(text) == expected
    if not expected:
        assert "No users match these filters." in text


async def test_the_list_pages_by_keyset_keeping_its_filters(embedded_stack: Stack) -> None:
    stack = embedded_stack
    admin = stack.headers(stack.admin_token)
    text = await page(await stack.client.get("/admin/users?role=member&limit=1", headers=admin))
    assert emails_in(text) == ["other@example.com"]
    link = next_link(text)
    assert link is not None and "role=member" in link and "limit=1" in link
    text = await page(await stack.client.get(link, headers=admin))
    assert emails_in(text) == ["member@example.com"]
    assert next_link(text) is None
    assert '<a href="/admin/users?role=member&limit=1">Newest</a>' in text


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("role=boss", "role"),
        ("active=maybe", "active"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        (f"email={'a' * 321}", "email"),
    ],
)
async def test_a_bad_filter_is_a_422_page_naming_it(
    embedded_stack: Stack, query: str, field: str
) -> None:
    stack = embedded_stack
    response = await stack.client.get(
        f"/admin/users?{query}", headers=stack.headers(stack.admin_token)
    )
    text = await page(response, 422)
    assert f"<li>{field}: " in text


async def test_a_cursor_of_other_filters_is_a_400_page(embedded_stack: Stack) -> None:
    stack = embedded_stack
    admin = stack.headers(stack.admin_token)
    text = await page(await stack.client.get("/admin/users?limit=1", headers=admin))
    link = next_link(text)
    assert link is not None
    await page(await stack.client.get(link.replace("limit=1", "role=admin"), headers=admin), 400)


async def test_operators_and_members_may_not_see_the_users_pages(embedded_stack: Stack) -> None:
    stack = embedded_stack
    member = get_by_email(stack.db, "member@example.com")
    operator = operator_token(stack)
    for token in (operator, stack.member_token):
        headers = stack.headers(token)
        for path in ("/admin/users", f"/admin/users/{member.id}"):
            await page(await stack.client.get(path, headers=headers), 403)
        for action in ("role", "active", "sign-out"):
            response = await stack.client.post(
                f"/admin/users/{member.id}/{action}",
                data={"role": "admin", "active": "false"},
                headers=headers,
            )
            await page(response, 403)
    assert get_by_email(stack.db, "member@example.com").role == Role.MEMBER
    # The operator's navigation has no Users link; the admin's has.
    text = await page(await stack.client.get("/admin/", headers=stack.headers(operator)))
    assert 'href="/admin/users"' not in text


async def test_a_user_s_page_shows_the_account_its_sessions_and_keys(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    member = get_by_email(stack.db, "member@example.com")
    signed_in = sign_in(stack)
    api_keys.create(
        stack.db, member.id, NewKey(name="ci", scopes=["jobs:read"]), max_keys=5, client=NOBODY
    )
    response = await stack.client.get(
        f"/admin/users/{member.id}", headers=stack.headers(stack.admin_token)
    )
    text = await page(response)
    assert "<h1>member@example.com</h1>" in text
    assert "<dt>Role</dt><dd>member</dd>" in text
    assert "<dt>Second factor</dt><dd>Off</dd>" in text
    assert "Sessions (1 open)" in text and "127.0.0.1" in text and signed_in.access_token
    assert "API keys (1)" in text and "jobs:read" in text
    assert 'href="/admin/jobs?owner=member%40example.com"' in text
    assert f'href="/admin/audit?target={member.id}"' in text
    assert 'action="/admin/users/' in text and "Change role" in text
    assert "Deactivate account" in text and "Sign out everywhere" in text


async def test_an_admin_s_own_page_offers_no_demotion(embedded_stack: Stack) -> None:
    stack = embedded_stack
    admin = get_by_email(stack.db, "admin@example.com")
    response = await stack.client.get(
        f"/admin/users/{admin.id}", headers=stack.headers(stack.admin_token)
    )
    text = await page(response)
    assert "You cannot change your own role" in text
    assert "Change role" not in text and "Deactivate account" not in text


@pytest.mark.parametrize("user_id", [str(uuid.uuid4()), "not-an-id"], ids=["unknown", "malformed"])
async def test_an_unknown_user_is_a_404_page(embedded_stack: Stack, user_id: str) -> None:
    stack = embedded_stack
    admin = stack.headers(stack.admin_token)
    await page(await stack.client.get(f"/admin/users/{user_id}", headers=admin), 404)
    response = await stack.client.post(
        f"/admin/users/{user_id}/role", data={"role": "member"}, headers=admin
    )
    await page(response, 404)


async def test_a_role_change_takes_effect_and_is_audited(embedded_stack: Stack) -> None:
    stack = embedded_stack
    admin = get_by_email(stack.db, "admin@example.com")
    member = get_by_email(stack.db, "member@example.com")
    headers = stack.headers(stack.admin_token)
    response = await stack.client.post(
        f"/admin/users/{member.id}/role",
        data={"role": "operator"},
        headers=headers,
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == f"/admin/users/{member.id}?done=role"
    assert get_by_email(stack.db, "member@example.com").role == Role.OPERATOR
    [event] = events(stack, "role_changed")
    assert (event.actor_id, event.subject_id) == (admin.id, member.id)
    assert event.details == {"from": "member", "to": "operator"}
    # The member's token now acts as an operator: the admin pages open to it at once.
    await page(await stack.client.get("/admin/", headers=stack.headers()))
    text = await page(await stack.client.get(response.headers["Location"], headers=headers))
    assert '<p class="notice" role="status">The role is saved.</p>' in text
    assert "<dt>Role</dt><dd>operator</dd>" in text


async def test_an_unknown_role_is_a_422_page(embedded_stack: Stack) -> None:
    stack = embedded_stack
    member = get_by_email(stack.db, "member@example.com")
    for data in ({"role": "boss"}, {}):
        response = await stack.client.post(
            f"/admin/users/{member.id}/role", data=data, headers=stack.headers(stack.admin_token)
        )
        assert "<li>role: one of admin, operator, member</li>" in await page(response, 422)
    assert events(stack, "role_changed") == []


async def test_an_admin_cannot_demote_or_deactivate_themselves(embedded_stack: Stack) -> None:
    stack = embedded_stack
    admin = get_by_email(stack.db, "admin@example.com")
    headers = stack.headers(stack.admin_token)
    for action, data in (("role", {"role": "member"}), ("active", {"active": "false"})):
        response = await stack.client.post(
            f"/admin/users/{admin.id}/{action}", data=data, headers=headers
        )
        text = await page(response, 409)
        assert "409 Conflict" in text
        assert "admins cannot demote or disable themselves" in text
    admin = get_by_email(stack.db, "admin@example.com")
    assert (admin.role, admin.active) == (Role.ADMIN, True)
    assert events(stack, "role_changed") == events(stack, "user_disabled") == []


async def test_deactivating_refuses_the_user_at_once_and_activating_lets_them_back(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    member = get_by_email(stack.db, "member@example.com")
    headers = stack.headers(stack.admin_token)
    signed_in = sign_in(stack)
    assert (await stack.client.get("/v1/jobs", headers=stack.headers())).status == 200
    response = await stack.client.post(
        f"/admin/users/{member.id}/active",
        data={"active": "false"},
        headers=headers,
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"].endswith("?done=deactivated")
    assert (await stack.client.get("/v1/jobs", headers=stack.headers())).status == 401
    [event] = events(stack, "user_disabled")
    assert event.subject_id == member.id and event.details["sessions_ended"] == 1
    text = await page(await stack.client.get(response.headers["Location"], headers=headers))
    assert "The account is deactivated" in text and "Activate account" in text
    assert "No open sessions." in text
    listed = await page(await stack.client.get("/admin/users?active=false", headers=headers))
    assert emails_in(listed) == ["member@example.com"]

    response = await stack.client.post(
        f"/admin/users/{member.id}/active", data={"active": "true"}, headers=headers
    )
    text = await page(response)  # followed the redirect
    assert "The account is active again." in text
    assert len(events(stack, "user_enabled")) == 1
    # The old session stays ended; a new sign-in works.
    stale = stack.headers(signed_in.access_token)
    assert (await stack.client.get("/v1/jobs", headers=stale)).status == 401
    fresh = stack.headers(sign_in(stack).access_token)
    assert (await stack.client.get("/v1/jobs", headers=fresh)).status == 200


async def test_active_must_be_true_or_false(embedded_stack: Stack) -> None:
    stack = embedded_stack
    member = get_by_email(stack.db, "member@example.com")
    response = await stack.client.post(
        f"/admin/users/{member.id}/active",
        data={"active": "no"},
        headers=stack.headers(stack.admin_token),
    )
    assert "<li>active: true or false</li>" in await page(response, 422)


async def test_sign_out_everywhere_ends_every_session_and_names_the_admin(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    admin = get_by_email(stack.db, "admin@example.com")
    member = get_by_email(stack.db, "member@example.com")
    first, second = sign_in(stack), sign_in(stack)
    response = await stack.client.post(
        f"/admin/users/{member.id}/sign-out",
        headers=stack.headers(stack.admin_token),
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == f"/admin/users/{member.id}?done=signed-out"
    for tokens in (first, second):
        response = await stack.client.get("/v1/jobs", headers=stack.headers(tokens.access_token))
        assert response.status == 401
    [event] = events(stack, "session_revoked")
    assert (event.actor_id, event.subject_id) == (admin.id, member.id)
    assert sorted(event.details["sessions"]) == sorted(str(t.session_id) for t in (first, second))
    # Their API access without a session (the stack's token) is not a sign-in: it stays.
    assert (await stack.client.get("/v1/jobs", headers=stack.headers())).status == 200
