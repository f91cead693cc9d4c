"""Attempt limiting for sign-in, password reset and MFA: at most `limit` hits of a key (such
as `login:account:<email>` or `login:ip:<address>`) in any sliding window of `window`
seconds.

Hits are counted on Redis, so every web process shares them, or in memory in the embedded
mode, which has no Redis. A refused attempt is not counted: the lockout ends a window after
the hits that caused it, however often the caller knocks meanwhile. Keys are stored as
their SHA-256, so no email or address sits in Redis, and a long key takes no more room.

When Redis fails, attempts are allowed (fail open) and a warning is logged: an outage must
not lock every user out. Until Redis answers again, guessing is slowed only by the cost of
each password check.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from conveyor.errors import ConfigurationError, TooManyRequestsError
from conveyor.logs import Outage

logger = logging.getLogger(__name__)

UNITS = {"s": 1, "m": 60, "h": 3600}
_RULE = re.compile(r"\s*(?P<limit>[0-9]+)\s*/\s*(?P<count>[0-9]*)\s*(?P<unit>[smh])\s*")

#: The largest limit of a rule: each key keeps the time of up to `limit` hits.
MAX_LIMIT = 10_000
#: Keys the in-memory store keeps at most; past it, the least recently hit ones are dropped.
MEMORY_MAX_KEYS = 100_000


@dataclass(frozen=True)
class Rule:
    """At most `limit` hits per key in any `window` seconds."""

    limit: int
    window: int

    @classmethod
    def parse(cls, text: str) -> Rule:
        """`10/15m`, `5/60s`, `100/1h` (`5/m` is `5/1m`); ConfigurationError otherwise."""
        match = _RULE.fullmatch(text)
        if match is None:
            raise ConfigurationError(
                f"expected a rate as LIMIT/WINDOW with a unit s, m or h, such as 10/15m, "
                f"5/60s or 100/1h; got {text!r}"
            )
        limit = int(match["limit"])
        window = int(match["count"] or 1) * UNITS[match["unit"]]
        if not 1 <= limit <= MAX_LIMIT:
            raise ConfigurationError(f"the limit of {text!r} must be within 1..{MAX_LIMIT}")
        if window < 1:
            raise ConfigurationError(f"the window of {text!r} must be at least 1 second")
        return cls(limit, window)


@dataclass(frozen=True)
class Decision:
    """Whether an attempt may go on; if not, in how many seconds one may (`retry_after`).
    `remaining`: how many more attempts the window allows now."""

    allowed: bool
    retry_after: int
    remaining: int


def _allowed(remaining: int) -> Decision:
    return Decision(allowed=True, retry_after=0, remaining=remaining)


def _refused(wait: float) -> Decision:
    return Decision(allowed=False, retry_after=max(1, math.ceil(wait)), remaining=0)


class Store(Protocol):
    """Where hits are counted: Redis, or this process's memory."""

    def attempt(self, key: str, rule: Rule, now: float, *, record: bool) -> Decision:
        """The decision for one more hit of `key` at `now`; the hit is counted if `record`
        and allowed."""
        ...

    def reset(self, key: str) -> None:
        """Forget the hits of `key`."""
        ...


class MemoryStore:
    """Hits kept in this process (the embedded mode): thread-safe, at most `max_keys` keys."""

    def __init__(self, max_keys: int = MEMORY_MAX_KEYS) -> None:
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()  # least recently hit first

    def attempt(self, key: str, rule: Rule, now: float, *, record: bool) -> Decision:
        with self._lock:
            hits = self._hits.pop(key, None) or deque()
            while hits and hits[0] <= now - rule.window:
                hits.popleft()
            if len(hits) >= rule.limit:
                # refused until enough hits leave the window for one more to fit
                decision = _refused(hits[len(hits) - rule.limit] + rule.window - now)
            else:
                if record:
                    hits.append(now)
                decision = _allowed(rule.limit - len(hits))
            if hits:
                self._hits[key] = hits
                if len(self._hits) > self._max_keys:
                    self._hits.popitem(last=False)
            return decision

    def reset(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)


#: One attempt at KEYS[1], a sorted set of the times (ms) of the hits in its window.
#: ARGV: now (ms), window (ms), limit, and the member that records the hit ('': only look).
#: Returns {1, remaining} or {0, ms until one more hit fits}.
ATTEMPT = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local freeing = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  return {0, tonumber(freeing[2]) + window - now}
end
if ARGV[4] == '' then
  return {1, limit - count}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return {1, limit - count - 1}
"""


class RedisStore:
    """Hits kept on Redis under `<prefix>:throttle:`, shared by every process; each key
    expires a window after its last hit. Fails open while Redis does not answer."""

    def __init__(self, client: redis.Redis[bytes], prefix: str) -> None:
        self._client = client
        self._prefix = f"{prefix}:throttle:"
        self._attempt = client.register_script(ATTEMPT)
        self.outage = Outage(
            "Redis of the attempt limits (every attempt allowed meanwhile)", logger
        )

    def attempt(self, key: str, rule: Rule, now: float, *, record: bool) -> Decision:
        member = f"{now:.3f}:{secrets.token_hex(4)}" if record else ""
        args = [round(now * 1000), rule.window * 1000, rule.limit, member]
        try:
            allowed, value = self._attempt(keys=[self._prefix + key], args=args)
        except redis.exceptions.RedisError as exc:
            self.outage.failed(exc)
            return _allowed(rule.limit)
        self.outage.succeeded()
        return _allowed(int(value)) if allowed else _refused(int(value) / 1000)

    def reset(self, key: str) -> None:
        try:
            self._client.delete(self._prefix + key)
        except redis.exceptions.RedisError as exc:
            self.outage.failed(exc)
            return
        self.outage.succeeded()


def make_store(redis_url: str | None, prefix: str) -> Store:
    """The Redis store at `redis_url`, or the in-memory one without it (embedded mode).

    Its client waits at most a second per try, and tries twice: while Redis is down, an
    attempt waits about two seconds at most (far less when the connection is refused) before
    it goes on unthrottled.
    """
    if not redis_url:
        return MemoryStore()
    client = redis.Redis.from_url(
        redis_url, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 1)
    )
    return RedisStore(client, prefix)


class Throttle:
    """One rule applied to keys, in a store. `hit` counts an attempt, `peek` only asks."""

    def __init__(self, store: Store, rule: Rule, *, clock: Callable[[], float] = time.time):
        self.store = store
        self.rule = rule
        self._clock = clock

    @staticmethod
    def _stored(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def hit(self, key: str) -> Decision:
        """Count an attempt of `key`, unless the window is full: then it is refused."""
        return self.store.attempt(self._stored(key), self.rule, self._clock(), record=True)

    def peek(self, key: str) -> Decision:
        """Whether an attempt of `key` would be allowed now, counting nothing."""
        return self.store.attempt(self._stored(key), self.rule, self._clock(), record=False)

    def reset(self, key: str) -> None:
        """Forget the attempts of `key` (after a successful sign-in, say)."""
        self.store.reset(self._stored(key))


def too_many(decision: Decision, what: str, *, field: str | None = None) -> TooManyRequestsError:
    """The 429 error for a refused `decision`, with its Retry-After: `what` names the
    attempts (`sign-in attempts for this account`); `field`, the request's field in cause."""
    message = f"too many {what}: retry in {decision.retry_after} seconds"
    return TooManyRequestsError(
        message,
        retry_after=decision.retry_after,
        errors=[{"field": field, "message": message}] if field else None,
    )
