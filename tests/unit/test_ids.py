"""UUIDv7 ids: version and variant, creation order (also within a millisecond), uniqueness."""

from __future__ import annotations

import threading
import time
import types
import uuid

import pytest

from conveyor import ids
from conveyor.ids import uuid7


def _ms(value: uuid.UUID) -> int:
    return value.int >> 80


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A clock that only moves when told to; the generator's state is restored afterwards."""
    clock = types.SimpleNamespace(ns=time.time_ns())
    monkeypatch.setattr(ids, "time", types.SimpleNamespace(time_ns=lambda: clock.ns))
    monkeypatch.setattr(ids, "_last_ms", 0)
    monkeypatch.setattr(ids, "_counter", 0)
    return clock


def test_uuid7_has_version_7_and_the_rfc_4122_variant() -> None:
    for _ in range(100):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_uuid7_carries_the_current_unix_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    # the generator may borrow the next millisecond after 4096 ids in one
    assert before <= _ms(value) <= after + 1


def test_ids_sort_in_creation_order_over_many_calls() -> None:
    values = [uuid7() for _ in range(20_000)]
    assert values == sorted(values)
    assert [str(v) for v in values] == sorted(str(v) for v in values)
    assert [v.bytes for v in values] == sorted(v.bytes for v in values)


def test_ids_are_unique() -> None:
    values = [uuid7() for _ in range(20_000)]
    assert len(set(values)) == len(values)


def test_ids_sort_in_creation_order_within_one_millisecond(
    frozen_clock: types.SimpleNamespace,
) -> None:
    values = [uuid7() for _ in range(1000)]
    assert {_ms(v) for v in values} == {frozen_clock.ns // 1_000_000}
    assert values == sorted(values)
    assert len(set(values)) == len(values)


def test_more_than_4096_ids_in_one_millisecond_borrow_the_next_one(
    frozen_clock: types.SimpleNamespace,
) -> None:
    values = [uuid7() for _ in range(10_000)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    now_ms = frozen_clock.ns // 1_000_000
    assert _ms(values[0]) == now_ms
    assert _ms(values[-1]) > now_ms
    assert all(v.version == 7 and v.variant == uuid.RFC_4122 for v in values)


def test_ids_keep_their_order_when_the_clock_goes_back(
    frozen_clock: types.SimpleNamespace,
) -> None:
    first = uuid7()
    frozen_clock.ns -= 5_000_000_000  # the wall clock steps back five seconds
    second = uuid7()
    assert second > first
    assert _ms(second) == _ms(first)


def test_ids_use_the_new_millisecond_once_the_clock_moves_on(
    frozen_clock: types.SimpleNamespace,
) -> None:
    first = uuid7()
    frozen_clock.ns += 3_000_000
    second = uuid7()
    assert _ms(second) == _ms(first) + 3
    assert second > first


def test_ids_from_several_threads_are_unique() -> None:
    results: list[list[uuid.UUID]] = [[] for _ in range(8)]

    def generate(out: list[uuid.UUID]) -> None:
        out.extend(uuid7() for _ in range(2000))

    threads = [threading.Thread(target=generate, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    everything = [v for out in results for v in out]
    assert len(everything) == 16_000
    assert len(set(everything)) == 16_000
    for out in results:
        assert out == sorted(out)
