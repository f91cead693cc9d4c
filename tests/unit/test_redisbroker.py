"""The Redis broker's construction from settings (no Redis needed: nothing connects)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from conveyor.broker import build_broker
from conveyor.redisbroker import RedisBroker
from conveyor.settings import Settings


def test_a_redis_url_builds_our_broker_with_the_heartbeat_settings() -> None:
    broker = build_broker(
        "redis://127.0.0.1:6379/0",
        namespace="ns",
        redis_heartbeat_timeout=7.5,
        redis_maintenance_interval=0.5,
    )
    assert isinstance(broker, RedisBroker)
    assert broker.namespace == "ns"
    assert broker.heartbeat_timeout == 7500  # Dramatiq counts milliseconds
    assert broker.maintenance_interval == 0.5


def test_maintenance_runs_on_schedule_never_by_chance() -> None:
    broker = build_broker("redis://127.0.0.1:6379/0")
    assert isinstance(broker, RedisBroker)
    for command in ("enqueue", "fetch", "requeue", "qsize", "purge"):
        assert not any(broker._should_do_maintenance(command) for _ in range(5000))
    assert broker._should_do_maintenance("maintain") == 1


def test_the_defaults_bound_a_dead_workers_messages_to_eleven_seconds() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_heartbeat_timeout_seconds == 10.0
    assert settings.redis_maintenance_interval_seconds == 1.0


def test_a_heartbeat_timeout_shorter_than_three_maintenance_intervals_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 3 times"):
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            redis_heartbeat_timeout_seconds=2.0,
            redis_maintenance_interval_seconds=1.0,
        )
