"""Attempt limiting in memory (the embedded mode): sliding windows, rules, the 429 error."""

from __future__ import annotations

import threading

import pytest

from conveyor.errors import ConfigurationError
from conveyor.security.throttle import (
    Decision,
    MemoryStore,
    Rule,
    Throttle,
    make_store,
    too_many,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def throttle(clock: Clock, rule: str = "3/1m", store: MemoryStore | None = None) -> Throttle:
    return Throttle(store or MemoryStore(), Rule.parse(rule), clock=clock)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("10/15m", Rule(10, 900)),
        ("5/60s", Rule(5, 60)),
        ("100/1h", Rule(100, 3600)),
        ("5/m", Rule(5, 60)),
        (" 7 / 2 h ", Rule(7, 7200)),
    ],
)
def test_rules_are_read_from_their_setting(text: str, rule: Rule) -> None:
    assert Rule.parse(text) == rule


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "LIMIT/WINDOW"),
        ("10", "LIMIT/WINDOW"),
        ("10/15", "LIMIT/WINDOW"),
        ("10/15d", "LIMIT/WINDOW"),
        ("ten/1m", "LIMIT/WINDOW"),
        ("-1/1m", "LIMIT/WINDOW"),
        ("0/1m", "within 1..10000"),
        ("10001/1h", "within 1..10000"),
        ("5/0s", "at least 1 second"),
    ],
)
def test_a_bad_rule_is_a_configuration_error_saying_why(text: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        Rule.parse(text)


def test_hits_are_allowed_up_to_the_limit_then_refused(clock: Clock) -> None:
    limiter = throttle(clock)
    assert [limiter.hit("login:account:ada").remaining for _ in range(3)] == [2, 1, 0]
    refused = limiter.hit("login:account:ada")
    assert refused == Decision(allowed=False, retry_after=60, remaining=0)
    assert limiter.hit("login:account:grace").allowed  # keys are counted apart


def test_the_window_slides_one_hit_at_a_time(clock: Clock) -> None:
    limiter = throttle(clock)
    for _ in range(2):
        limiter.hit("k")
        clock.now += 20
    limiter.hit("k")  # hits at 0, 20, 40
    clock.now = 1_700_000_000.0 + 59.5
    assert limiter.peek("k") == Decision(allowed=False, retry_after=1, remaining=0)
    clock.now = 1_700_000_000.0 + 60  # the first hit leaves the window
    assert limiter.hit("k").allowed
    assert limiter.hit("k").retry_after == 20  # until the hit at 20 leaves


def test_refused_attempts_do_not_extend_the_lockout(clock: Clock) -> None:
    limiter = throttle(clock, "2/1m")
    limiter.hit("k")
    limiter.hit("k")
    for _ in range(10):
        clock.now += 5
        assert not limiter.hit("k").allowed
    clock.now = 1_700_000_000.0 + 60
    assert limiter.hit("k").allowed


def test_peek_counts_nothing(clock: Clock) -> None:
    limiter = throttle(clock)
    for _ in range(5):
        assert limiter.peek("k") == Decision(allowed=True, retry_after=0, remaining=3)
    limiter.hit("k")
    assert limiter.peek("k").remaining == 2


def test_reset_forgets_the_hits_of_one_key(clock: Clock) -> None:
    limiter = throttle(clock, "1/1h")
    limiter.hit("a")
    limiter.hit("b")
    limiter.reset("a")
    assert limiter.hit("a").allowed
    assert not limiter.hit("b").allowed


def test_memory_is_bounded_by_dropping_the_least_recently_hit_keys(clock: Clock) -> None:
    store = MemoryStore(max_keys=3)
    limiter = throttle(clock, "1/1h", store)
    for key in ("a", "b", "c"):
        limiter.hit(key)
    limiter.peek("a")  # touched: "b" is now the least recent
    limiter.hit("d")
    assert not limiter.hit("a").allowed
    assert limiter.hit("b").allowed  # forgotten
    assert len(store._hits) == 3


def test_concurrent_hits_never_pass_the_limit(clock: Clock) -> None:
    limiter = throttle(clock, "100/1h")
    allowed: list[bool] = []
    lock = threading.Lock()

    def knock() -> None:
        for _ in range(50):
            decision = limiter.hit("shared")
            with lock:
                allowed.append(decision.allowed)

    threads = [threading.Thread(target=knock) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(allowed) == 400
    assert allowed.count(True) == 100


def test_without_redis_the_store_is_in_memory() -> None:
    assert isinstance(make_store(None, "conveyor"), MemoryStore)
    assert isinstance(make_store("", "conveyor"), MemoryStore)


def test_a_refusal_becomes_a_429_with_retry_after_naming_the_field() -> None:
    error = too_many(
        Decision(allowed=False, retry_after=42, remaining=0),
        "sign-in attempts for this account",
        field="email",
    )
    assert error.status == 429
    assert error.headers["Retry-After"] == "42"
    assert error.detail == "too many sign-in attempts for this account: retry in 42 seconds"
    assert error.errors == [{"field": "email", "message": error.detail}]
    assert too_many(Decision(False, 5, 0), "attempts").errors == []
