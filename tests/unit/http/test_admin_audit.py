"""The audit log page: admins read the events newest first, filtered by who acted, on whom,
which actions and when, page by page; operators and members may not."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest

from conveyor.db import transaction
from conveyor.models.base import utcnow
from conveyor.services import audit
from conveyor.services.audit import Client
from conveyor.services.users import get_by_email
from tests.stack import Stack
from tests.unit.http.test_admin_users import next_link, operator_token, page


def record(
    stack: Stack, action: str, actor: str | None, subject: str | None, **details: object
) -> None:
    ids = {
        email: get_by_email(stack.db, email).id for email in (actor, subject) if email is not None
    }
    with transaction(stack.db) as session:
        audit.record(
            session,
            action,
            client=Client("203.0.113.9", "curl/8"),
            actor_id=ids.get(actor) if actor else None,
            subject_id=ids.get(subject) if subject else None,
            **details,
        )


def actions_in(text: str) -> list[str]:
    return re.findall(r"<td><code>([a-z_]+)</code></td>", text)


@pytest.fixture
def logged(embedded_stack: Stack) -> Stack:
    """Three events, oldest first: a login, a role change, a sign-in failure of nobody."""
    stack = embedded_stack
    record(stack, "login", "member@example.com", "member@example.com", amr=["pwd"])
    record(
        stack,
        "role_changed",
        "admin@example.com",
        "member@example.com",
        **{"from": "member", "to": "operator"},
    )
    record(stack, "login_failed", None, None, email="x<y>@example.com")
    return stack


async def test_admins_read_the_log_newest_first(logged: Stack) -> None:
    stack = logged
    response = await stack.client.get("/admin/audit", headers=stack.headers(stack.admin_token))
    text = await page(response)
    assert "<h1>Audit log</h1>" in text
    assert 'aria-current="page">Audit log</a>' in text
    assert actions_in(text) == ["login_failed", "role_changed", "login"]
    row = text[text.index("<code>role_changed</code>") :]
    row = row[: row.index("</tr>")]
    assert "member@example.com" in row and "203.0.113.9" in row
    assert '{"from":"member","to":"operator"}' in row


async def test_admins_get_the_names_as_links_to_the_users(logged: Stack) -> None:
    stack = logged
    member = get_by_email(stack.db, "member@example.com")
    response = await stack.client.get("/admin/audit", headers=stack.headers(stack.admin_token))
    text = await page(response)
    assert f'<a href="/admin/users/{member.id}">member@example.com</a>' in text


async def test_details_are_escaped(logged: Stack) -> None:
    stack = logged
    response = await stack.client.get("/admin/audit", headers=stack.headers(stack.admin_token))
    raw = await response.text()
    assert "x<y>@" not in raw
    assert "x&lt;y&gt;@" in raw


async def test_operators_and_members_may_not_read_the_log(logged: Stack) -> None:
    """Like GET /v1/audit-events: the log shows every user's address, IP and user agent, and
    its filters tell whether an account exists."""
    stack = logged
    for token in (operator_token(stack), stack.member_token):
        headers = stack.headers(token)
        await page(await stack.client.get("/admin/audit", headers=headers), 403)
        await page(
            await stack.client.get("/admin/audit?actor=admin@example.com", headers=headers), 403
        )


async def test_the_nav_shows_the_log_to_admins_only(logged: Stack) -> None:
    stack = logged
    admin = await page(await stack.client.get("/admin/", headers=stack.headers(stack.admin_token)))
    assert 'href="/admin/audit"' in admin
    headers = stack.headers(operator_token(stack))
    operator = await page(await stack.client.get("/admin/", headers=headers))
    assert 'href="/admin/audit"' not in operator


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("action=login", ["login"]),
        ("action=login,login_failed", ["login_failed", "login"]),
        ("action=login+role_changed", ["role_changed", "login"]),
        ("actor=admin@example.com", ["role_changed"]),
        ("actor=ADMIN@example.com&action=login", []),
        ("target=member@example.com", ["role_changed", "login"]),
        ("actor=&action=&target=&since=&until=", ["login_failed", "role_changed", "login"]),
    ],
)
async def test_the_log_filters_by_action_actor_and_target(
    logged: Stack, query: str, expected: list[str]
) -> None:
    stack = logged
    response = await stack.client.get(
        f"/admin/audit?{query}", headers=stack.headers(stack.admin_token)
    )
    text = await page(response)
    assert actions_in(text) == expected
    if not expected:
        assert "No events match these filters." in text


async def test_a_user_is_named_by_id_too(logged: Stack) -> None:
    stack = logged
    admin = get_by_email(stack.db, "admin@example.com")
    response = await stack.client.get(
        f"/admin/audit?actor={admin.id}", headers=stack.headers(stack.admin_token)
    )
    text = await page(response)
    assert actions_in(text) == ["role_changed"]
    assert f'value="{admin.id}"' in text  # the form keeps the filter


async def test_the_log_filters_by_time(logged: Stack) -> None:
    stack = logged
    headers = stack.headers(stack.admin_token)
    soon = (utcnow() + dt.timedelta(minutes=5)).replace(tzinfo=None).isoformat(timespec="seconds")
    ago = (utcnow() - dt.timedelta(minutes=5)).replace(tzinfo=None).isoformat(timespec="seconds")
    text = await page(await stack.client.get(f"/admin/audit?since={soon}", headers=headers))
    assert actions_in(text) == []
    text = await page(await stack.client.get(f"/admin/audit?until={ago}", headers=headers))
    assert actions_in(text) == []
    response = await stack.client.get(
        "/admin/audit", params={"since": ago, "until": soon}, headers=headers
    )
    text = await page(response)
    assert len(actions_in(text)) == 3
    assert f'name="since" type="datetime-local" step="1" value="{ago}"' in text
    # A time with its offset is read in it, and shown in UTC.
    there = (utcnow() - dt.timedelta(minutes=5)).astimezone(dt.timezone(dt.timedelta(hours=2)))
    response = await stack.client.get(
        "/admin/audit", params={"since": there.isoformat(timespec="seconds")}, headers=headers
    )
    text = await page(response)
    assert len(actions_in(text)) == 3
    assert f'value="{ago}"' in text


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=yesterday", "since"),
        ("until=9999-12-31T23:59:59-01:00", "until"),
        ("since=0001-01-01T00:00%2B14:00", "since"),
        ("actor=nobody@example.com", "actor"),
        ("target=not-an-id", "target"),
        ("actor=a@b@c", "actor"),
        (f"action={','.join(['login'] * 21)}", "action"),
        (f"action={'x' * 41}", "action"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
    ],
)
async def test_a_bad_filter_is_a_422_page_naming_it(logged: Stack, query: str, field: str) -> None:
    stack = logged
    response = await stack.client.get(
        f"/admin/audit?{query}", headers=stack.headers(stack.admin_token)
    )
    text = await page(response, 422)
    assert f"<li>{field}: " in text


async def test_the_calendar_s_first_and_last_moments_are_filters_too(logged: Stack) -> None:
    stack = logged
    response = await stack.client.get(
        "/admin/audit?since=0001-01-01T00:00&until=9999-12-31T23:59:59.999999",
        headers=stack.headers(stack.admin_token),
    )
    text = await page(response)
    assert len(actions_in(text)) == 3
    assert 'value="0001-01-01T00:00:00"' in text


async def test_the_log_pages_by_keyset_keeping_its_filters(logged: Stack) -> None:
    stack = logged
    headers = stack.headers(stack.admin_token)
    record(stack, "logout", "other@example.com", "other@example.com")
    seen: list[str] = []
    url: str | None = "/admin/audit?action=login,login_failed,role_changed&limit=2"
    while url is not None:
        text = await page(await stack.client.get(url, headers=headers))
        found = actions_in(text)
        assert 1 <= len(found) <= 2
        seen += found
        url = next_link(text)
        assert url is None or ("limit=2" in url and "action=" in url)
    assert seen == ["login_failed", "role_changed", "login"]


async def test_an_unknown_id_filters_to_nothing(logged: Stack) -> None:
    stack = logged
    response = await stack.client.get(
        f"/admin/audit?target={uuid.uuid4()}", headers=stack.headers(stack.admin_token)
    )
    assert actions_in(await page(response)) == []
