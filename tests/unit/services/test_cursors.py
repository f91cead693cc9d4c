"""List cursors: issued and read back under one key, for one set of filters, and nothing else."""

from __future__ import annotations

import base64
import uuid

import pytest

from conveyor.errors import BadRequestError, ConfigurationError
from conveyor.ids import uuid7
from conveyor.services.cursors import CURSOR_LENGTH, Cursors, Scope
from tests import stack

CURSORS = Cursors.of(stack.test_settings())
EVERYTHING = Scope()


def _refused(cursors: Cursors, cursor: str, scope: Scope = EVERYTHING) -> None:
    with pytest.raises(BadRequestError) as caught:
        cursors.read(cursor, scope)
    assert caught.value.status == 400
    assert [e["field"] for e in caught.value.errors] == ["cursor"]


def test_a_cursor_reads_back_as_the_job_it_was_issued_after() -> None:
    job_id = uuid7()
    scope = Scope.of(["queued", "running"], ["system.echo"], uuid.uuid4())
    cursor = CURSORS.issue(job_id, scope)
    assert len(cursor) == CURSOR_LENGTH
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert CURSORS.read(cursor, scope) == job_id


def test_the_same_filters_in_another_order_are_the_same_scope() -> None:
    cursor = CURSORS.issue(uuid7(), Scope.of(["running", "queued"], ["b", "a", "a"], None))
    CURSORS.read(cursor, Scope.of(["queued", "running"], ["a", "b"], None))


@pytest.mark.parametrize(
    "other",
    [
        Scope(),
        Scope.of(["queued"], [], None),
        Scope.of([], ["system.echo"], None),
        Scope.of([], [], uuid.uuid4()),
        Scope.of(["queued", "running"], [], None),
    ],
)
def test_a_cursor_is_refused_for_other_filters(other: Scope) -> None:
    scope = Scope.of(["queued"], ["system.echo"], None)
    _refused(CURSORS, CURSORS.issue(uuid7(), scope), other)


def test_a_cursor_of_another_key_is_refused() -> None:
    other = Cursors.of(stack.test_settings(secret_key="another-secret-key-that-is-long-enough-too"))
    _refused(CURSORS, other.issue(uuid7(), EVERYTHING))


def test_the_cursor_key_is_not_the_secret_key_itself() -> None:
    secret = stack.test_settings().secret_key
    assert secret is not None
    assert CURSORS.key != secret.get_secret_value().encode()
    assert len(CURSORS.key) == 32


def test_every_altered_character_is_refused() -> None:
    cursor = CURSORS.issue(uuid7(), EVERYTHING)
    for position, char in enumerate(cursor):
        altered = cursor[:position] + ("B" if char == "A" else "A") + cursor[position + 1 :]
        _refused(CURSORS, altered)


@pytest.mark.parametrize(
    "made_up",
    [
        "",
        "abc",
        "!" * CURSOR_LENGTH,
        "A" * CURSOR_LENGTH,
        "é" * CURSOR_LENGTH,
        base64.urlsafe_b64encode(uuid7().bytes).decode().rstrip("="),  # an unsigned id
        "A" * 10_000,
    ],
    ids=["empty", "short", "punctuation", "letters", "non-ascii", "unsigned-id", "huge"],
)
def test_made_up_cursors_are_refused(made_up: str) -> None:
    _refused(CURSORS, made_up)


def test_a_signed_cursor_of_another_version_is_refused() -> None:
    raw = base64.urlsafe_b64decode(CURSORS.issue(uuid7(), EVERYTHING))
    _refused(CURSORS, base64.urlsafe_b64encode(b"\x02" + raw[1:]).decode())


def test_cursors_need_a_secret_key() -> None:
    with pytest.raises(ConfigurationError):
        Cursors.of(stack.test_settings(secret_key=None))
