"""The /v1/jobs routes: what a client may send (and is refused), listing, cursors, cancel."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stack import Stack
from tests.unit.http.test_errors import fields, problem, submit

# --- numbers are numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "system.sleep", "payload": {"seconds": True}}, "payload.seconds"),
        ({"type": "system.sleep", "payload": {"steps": False}}, "payload.steps"),
        ({"type": "system.fail", "payload": {"failures": True}}, "payload.failures"),
        ({"type": "system.echo", "delay_seconds": True}, "delay_seconds"),
        ({"type": "system.echo", "delay_seconds": False}, "delay_seconds"),
    ],
)
async def test_a_boolean_where_a_number_belongs_is_unprocessable(
    embedded_stack: Stack, body: dict[str, Any], field: str
) -> None:
    response = await submit(embedded_stack, body)
    assert fields(await problem(response, 422)) == [field]


async def test_an_echo_payload_keeps_its_booleans(embedded_stack: Stack) -> None:
    job = await embedded_stack.submit("system.echo", {"yes": True, "n": 1})
    assert job["payload"] == {"yes": True, "n": 1}
