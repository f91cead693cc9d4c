"""Users and sessions by id for a few seconds, in bounded LRUs: a token's user, and whether its
session is still open, without a query per request."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from conveyor.models import AuthSession, User

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


#: How often a browser session's use is written (`last_used_at`), at most, per process.
TOUCH_SECONDS = 60.0


class BrowserSessionCache(TtlCache[uuid.UUID, AuthSession | None]):
    """Sign-in sessions' rows by id, for the session cookie: who, since when, until when, by
    what means (none of which changes; whether a session is still open is SessionCache's).
    Also when this process last wrote each one's use, so it writes at most once a minute."""

    def __init__(
        self,
        *,
        ttl: float = 60.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ttl=ttl, max_entries=max_entries, clock=clock)
        self._touched: OrderedDict[uuid.UUID, float] = OrderedDict()

    def due_for_touch(self, session_id: uuid.UUID) -> bool:
        """Whether this process should record a use of the session now (its first here, or a
        minute after the last one it recorded)."""
        last = self._touched.get(session_id)
        return last is None or self._clock() - last >= TOUCH_SECONDS

    def touched(self, session_id: uuid.UUID) -> None:
        """Count a use recorded now."""
        self._touched[session_id] = self._clock()
        self._touched.move_to_end(session_id)
        while len(self._touched) > self.max_entries:
            self._touched.popitem(last=False)
