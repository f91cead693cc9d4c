"""The audit log over HTTP: its filters are checked, and events made through an API key name
the key."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, update

from conveyor.db import transaction
from conveyor.http.auth import acting_role
from conveyor.models import AuditEvent, Role, User
from conveyor.models.base import utcnow
from tests.stack import Stack
from tests.unit.http.test_errors import fields, problem


@pytest.mark.parametrize(
    "query",
    [
        "since=0001-01-01T00:00:00%2B01:00",
        "until=9999-12-31T23:59:59-01:00",
        "since=yesterday",
        "until=2025-01-31T12:00:00",
    ],
)
async def test_a_time_filter_without_a_utc_time_is_refused_naming_it(
    embedded_stack: Stack, query: str
) -> None:
    stack = embedded_stack
    response = await stack.client.get(
        f"/v1/audit-events?{query}", headers=stack.headers(stack.admin_token)
    )
    assert fields(await problem(response, 422)) == [query.partition("=")[0]]


async def test_an_event_made_through_an_api_key_names_the_key(embedded_stack: Stack) -> None:
    stack = embedded_stack
    with transaction(stack.db) as session:  # an admin's key acts as admin while MFA is on
        session.execute(
            update(User).where(User.email == "admin@example.com").values(totp_enabled_at=utcnow())
        )
    created = await stack.client.post(
        "/v1/me/api-keys",
        json={"name": "provisioning", "scopes": ["users:read", "users:write"]},
        headers=stack.headers(stack.admin_token),
    )
    assert created.status == 201
    key = await created.json()
    with stack.db() as session:
        member_id = session.scalars(select(User.id).where(User.email == "member@example.com")).one()
    for credential, role in ((key["key"], "operator"), (stack.admin_token, "member")):
        changed = await stack.client.patch(
            f"/v1/users/{member_id}", json={"role": role}, headers=stack.headers(credential)
        )
        assert changed.status == 200, await changed.text()
    with stack.db() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "role_changed").order_by(AuditEvent.id)
        ).all()
    assert [e.details.get("via_api_key") for e in events] == [key["id"], None]


def test_only_a_second_factor_the_server_issues_counts(embedded_stack: Stack) -> None:
    admin = User(id=uuid.uuid4(), email="a@example.com", role="admin", totp_enabled_at=utcnow())
    settings = embedded_stack.settings
    assert acting_role(settings, admin, ("pwd", "otp")) == Role.ADMIN
    assert acting_role(settings, admin, ("pwd", "mfa")) == Role.MEMBER
