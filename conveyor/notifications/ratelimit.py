"""Per-provider rate limits: a provider is sent at most so many messages per window, across
every process of the pool (Dramatiq's window rate limiter on Redis; in-process without it).

A send that finds the window full waits for a slot up to `MAX_WAIT` seconds (or one window,
if shorter), polling a few times a second; past that the attempt ends with a deferring
`RetryLater` (after about a window, at most the job type's `max_backoff`), which uses up no
retry: a burst is spread out, and does not become dead letters.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass

from dramatiq.rate_limits import RateLimiterBackend, WindowRateLimiter
from dramatiq.rate_limits.backends import RedisBackend, StubBackend

from conveyor.errors import RetryLater
from conveyor.notifications.channels import Channel, Outgoing, Sent
from conveyor.settings import Settings

logger = logging.getLogger(__name__)

#: The longest a send waits for a slot before handing its job back for later (seconds): well
#: inside a job's time limit, and a bounded number of polls of Redis.
MAX_WAIT = 10.0

UNITS = {"s": 1, "m": 60, "h": 3600}
_LIMIT = re.compile(r"^\s*(?P<count>[1-9][0-9]*)\s*/\s*(?P<unit>[smh])\s*$")


@dataclass(frozen=True)
class Limit:
    """At most `count` messages per `window` seconds."""

    count: int
    window: int


def parse_limit(text: str) -> Limit:
    """`50/s`, `600/m` or `10000/h`; ValueError otherwise."""
    match = _LIMIT.match(text)
    if match is None:
        raise ValueError(f"expected COUNT/s, COUNT/m or COUNT/h, got {text!r}")
    return Limit(int(match.group("count")), UNITS[match.group("unit")])


class RateLimitedChannel:
    """A channel whose provider takes at most `limit` messages per window."""

    def __init__(
        self,
        channel: Channel,
        limiter: WindowRateLimiter,
        limit: Limit,
        *,
        max_wait: float = MAX_WAIT,
    ) -> None:
        self.max_wait = max_wait
        self.channel = channel
        self.name = channel.name
        self.provider = channel.provider
        self.limiter = limiter
        self.limit = limit

    def send(self, message: Outgoing) -> Sent:
        deadline = time.monotonic() + min(self.limit.window, self.max_wait)
        while True:
            with self.limiter.acquire(raise_on_failure=False) as acquired:
                if acquired:
                    return self.channel.send(message)
            if time.monotonic() >= deadline:
                # a slot frees within a window: come back then, spread over a second one
                delay = self.limit.window * (1 + random.random())
                logger.info("provider %s is at its rate limit; retrying later", self.provider)
                raise RetryLater(
                    delay, f"the {self.provider} provider is at its rate limit", deferred=True
                )
            time.sleep(min(self.limit.window / 20, 0.5) * (0.5 + random.random()))


def limited(channel: Channel, settings: Settings) -> Channel:
    """`channel` under its provider's limit from `CONVEYOR_NOTIFICATION_RATE_LIMITS`, or as it
    is when the provider has none."""
    text = (settings.notification_rate_limits or {}).get(channel.provider)
    if text is None:
        return channel
    limit = parse_limit(text)
    backend: RateLimiterBackend = (
        RedisBackend(url=settings.redis_url) if settings.redis_url else StubBackend()  # type: ignore[no-untyped-call]
    )
    key = f"{settings.redis_prefix}:notifications:rate:{channel.provider}"
    limiter = WindowRateLimiter(  # type: ignore[no-untyped-call]
        backend, key, limit=limit.count, window=limit.window
    )
    return RateLimitedChannel(channel, limiter, limit)
