"""A bare Dramatiq no-op actor: the baseline `bench/throughput.py` compares Conveyor with.

Run as `dramatiq bench.bare_actor --processes P --threads T` (from the repository root). It
uses a plain broker with Dramatiq's default settings and middleware, on its own queue. Each
message does one Redis INCR of `<key>:done`. The first one also stores `<key>:t0`, and the one
that brings the count to BENCH_BARE_N stores `<key>:t1` (wall-clock `time.time()`), so the
drain rate is N / (t1 - t0), with no start-up time in it.

Configured by environment variables, read at import:
  BENCH_BARE_BROKER_URL  amqp://… (RabbitmqBroker) or redis://… (RedisBroker)
  BENCH_BARE_NAMESPACE   key prefix of the Redis broker (default "dramatiq")
  BENCH_BARE_REDIS_URL   where the counters live (default redis://127.0.0.1:6379/0)
  BENCH_BARE_KEY         counter key prefix (default "bench:bare")
  BENCH_BARE_N           how many messages make a full drain (sets `<key>:t1`)
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis

QUEUE = "bench-bare"
BROKER_URL = os.environ.get("BENCH_BARE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
NAMESPACE = os.environ.get("BENCH_BARE_NAMESPACE", "dramatiq")
REDIS_URL = os.environ.get("BENCH_BARE_REDIS_URL", "redis://127.0.0.1:6379/0")
KEY = os.environ.get("BENCH_BARE_KEY", "bench:bare")
TOTAL = int(os.environ.get("BENCH_BARE_N", "0"))


def make_broker(url: str) -> dramatiq.Broker:
    """A broker with Dramatiq's defaults (no publisher confirms, default middleware)."""
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url)
    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(url=url, namespace=NAMESPACE)  # type: ignore[no-untyped-call]


broker = make_broker(BROKER_URL)
dramatiq.set_broker(broker)
counters = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(queue_name=QUEUE)
def noop() -> None:
    """Count one message; the first and the last one also note the time."""
    done = int(counters.incr(f"{KEY}:done"))
    if done == 1:
        counters.set(f"{KEY}:t0", repr(time.time()))
    if done == TOTAL:
        counters.set(f"{KEY}:t1", repr(time.time()))
