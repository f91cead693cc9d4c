"""Payload text that PostgreSQL stores (and the one character it cannot), over HTTP: both
brokers."""

from __future__ import annotations

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.integration


async def test_a_payload_with_backslash_u0000_text_round_trips_through_postgresql(
    stack: Stack,
) -> None:
    text = "C:\\u0000\\dir"  # a backslash then u0000: no NUL character
    job = await stack.submit("system.echo", {"path": text})
    done = await stack.wait_for(job["id"], "succeeded", "failed", within=15)
    assert done["result"] == {"path": text}
    assert stack.row(job["id"]).payload == {"path": text}


async def test_a_payload_with_a_nul_character_is_a_422(stack: Stack) -> None:
    problem = await stack.submit("system.echo", {"text": "a\x00b"}, expect=422)
    assert [error["field"] for error in problem["errors"]] == ["payload"]
