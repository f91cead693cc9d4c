"""The users and audit pages on PostgreSQL: the email filter takes `_` and `%` literally, a
deactivation and its audit event read back through the audit page's filters."""

from __future__ import annotations

import datetime as dt

import pytest

from conveyor.models import Role
from conveyor.models.base import utcnow
from conveyor.services.users import create_user, get_by_email
from tests.stack import Stack
from tests.unit.http.test_admin_audit import actions_in
from tests.unit.http.test_admin_users import emails_in, page

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_kind() -> str:
    return "rabbitmq"  # the pages read only the database: one broker is enough


async def test_the_email_filter_takes_wildcards_literally(stack: Stack) -> None:
    create_user(stack.db, "a_b@example.com", Role.MEMBER)
    create_user(stack.db, "axb@example.com", Role.MEMBER)
    create_user(stack.db, "a%c@example.com", Role.MEMBER)
    headers = stack.headers(stack.admin_token)
    text = await page(await stack.client.get("/admin/users?email=A_", headers=headers))
    assert emails_in(text) == ["a_b@example.com"]
    text = await page(await stack.client.get("/admin/users?email=a%25", headers=headers))
    assert emails_in(text) == ["a%c@example.com"]


async def test_a_deactivation_is_found_in_the_audit_log_by_its_filters(stack: Stack) -> None:
    member = get_by_email(stack.db, "member@example.com")
    headers = stack.headers(stack.admin_token)
    before = (utcnow() - dt.timedelta(minutes=1)).isoformat(timespec="seconds")
    response = await stack.client.post(
        f"/admin/users/{member.id}/active", data={"active": "false"}, headers=headers
    )
    assert "The account is deactivated" in await page(response)
    assert (await stack.client.get("/v1/jobs", headers=stack.headers())).status == 401
    response = await stack.client.get(
        "/admin/audit",
        params={
            "actor": "admin@example.com",
            "target": str(member.id),
            "action": "user_disabled,role_changed",
            "since": before,
        },
        headers=headers,
    )
    assert actions_in(await page(response)) == ["user_disabled"]
    response = await stack.client.get(
        "/admin/audit", params={"until": before, "action": "user_disabled"}, headers=headers
    )
    assert actions_in(await page(response)) == []
