"""Users and sessions by id for a few seconds, in bounded LRUs: a token's user, and whether its
session is still open, without a query per request."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from conveyor.models import User

#: Seconds a session's state is trusted: how late another process's revocation may be noticed.
SESSION_TTL = 5.0

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Each value (or a user's absence) is kept `ttl` seconds, so a change made elsewhere takes
    effect within that time; past `max_entries`, the least recently used go first, so the
    memory stays bounded however many keys a process sees."""

    def __init__(
        self,
        *,
        ttl: float = 10.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: K, load: Callable[[K], Awaitable[V]]) -> V:
        """The cached value, or `load(key)` once the entry is missing or stale."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] >= self._clock():
            self._entries.move_to_end(key)
            return entry[1]
        value = await load(key)
        self._entries[key] = (self._clock() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def drop(self, key: K) -> None:
        """Forget `key` (this process changed it): the next `get` loads it again."""
        self._entries.pop(key, None)


class UserCache(TtlCache[uuid.UUID, User | None]):
    """Users by id (None: no such user); a deactivation elsewhere takes effect within `ttl`."""


class SessionCache(TtlCache[uuid.UUID, bool]):
    """Whether each sign-in session is open. A session ended by another process stops its
    access tokens within `ttl` (SESSION_TTL); one ended by this process, at once (`drop`)."""
