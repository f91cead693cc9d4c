"""The audit log over HTTP: its filters are checked, and events made through an API key name
the key."""

from __future__ import annotations

import pytest

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
