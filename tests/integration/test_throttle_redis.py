"""Attempt limits on the real Redis: counted atomically across processes, stored hashed under
the prefix with an expiry, and allowing every attempt (with one warning) while Redis is down."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conveyor.security.throttle import Decision, RedisStore, Rule, Throttle, make_store
from tests.conftest import REDIS_URL
from tests.servers import PrivateRedis

pytestmark = pytest.mark.integration

START = 1_700_000_000.0


class Clock:
    """A clock the test moves by hand (Redis is given the caller's time)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix(redis_prefix: str) -> Iterator[str]:
    """A key prefix of the test's own, under the run's; its keys are removed after."""
    name = f"{redis_prefix}-throttle-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def client() -> Iterator[redis.Redis[bytes]]:
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


def store_of(prefix: str, url: str = REDIS_URL) -> RedisStore:
    store = make_store(url, prefix)
    assert isinstance(store, RedisStore)
    return store


def test_hits_are_limited_per_sliding_window(prefix: str) -> None:
    clock = Clock()
    limiter = Throttle(store_of(prefix), Rule.parse("3/1m"), clock=clock)
    assert [limiter.hit("login:account:ada@example.com").remaining for _ in range(3)] == [2, 1, 0]
    clock.now += 15
    assert limiter.hit("login:account:ada@example.com") == Decision(False, 45, 0)
    assert limiter.peek("login:account:ada@example.com") == Decision(False, 45, 0)
    assert limiter.hit("login:account:grace@example.com").allowed
    clock.now = START + 60  # the three hits leave the window
    assert limiter.peek("login:account:ada@example.com") == Decision(True, 0, 3)
    assert limiter.hit("login:account:ada@example.com").remaining == 2


def test_processes_share_the_counts_and_reset_clears_them(prefix: str) -> None:
    clock = Clock()
    rule = Rule.parse("2/1h")
    web1 = Throttle(store_of(prefix), rule, clock=clock)
    web2 = Throttle(store_of(prefix), rule, clock=clock)
    web1.hit("login:ip:192.0.2.7")
    web2.hit("login:ip:192.0.2.7")
    assert not web1.hit("login:ip:192.0.2.7").allowed
    web2.reset("login:ip:192.0.2.7")
    assert web1.hit("login:ip:192.0.2.7").allowed


def test_keys_sit_under_the_prefix_hashed_and_expire(
    prefix: str, client: redis.Redis[bytes]
) -> None:
    limiter = Throttle(store_of(prefix), Rule.parse("5/15m"))
    limiter.hit("login:account:ada@example.com")
    [key] = client.keys(f"{prefix}:*")
    assert key.decode().startswith(f"{prefix}:throttle:")
    assert b"ada" not in key
    assert 0 < client.pttl(key) <= 15 * 60 * 1000


def test_concurrent_hits_never_pass_the_limit(prefix: str) -> None:
    limiter = Throttle(store_of(prefix), Rule.parse("20/1h"))
    results: list[bool] = []
    lock = threading.Lock()

    def knock() -> None:
        store = Throttle(store_of(prefix), limiter.rule)  # a connection of its own
        for _ in range(10):
            allowed = store.hit("mfa:account:ada").allowed
            with lock:
                results.append(allowed)

    threads = [threading.Thread(target=knock) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 60
    assert results.count(True) == 20
    assert limiter.peek("mfa:account:ada").remaining == 0


def test_an_outage_allows_every_attempt_with_one_warning_and_limits_resume_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        store = store_of("conveyor-test-throttle", server.url)
        limiter = Throttle(store, Rule.parse("1/1h"))
        assert limiter.hit("reset:account:ada").allowed
        assert not limiter.hit("reset:account:ada").allowed
        server.stop()
        with caplog.at_level(logging.INFO, logger="conveyor.security.throttle"):
            for _ in range(3):
                assert limiter.hit("reset:account:ada") == Decision(True, 0, 1)
            limiter.reset("reset:account:ada")  # nothing raised either
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1
            assert "every attempt allowed" in warnings[0].getMessage()
            assert store.outage.down
            server.resume()
            assert not limiter.hit("reset:account:ada").allowed  # the count survived
            assert not store.outage.down
            assert any("reachable again" in r.getMessage() for r in caplog.records)
