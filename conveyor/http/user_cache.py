"""Users by id for a few seconds, in a bounded LRU: a token's user without a query per request."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from conveyor.models import User


class UserCache:
    """Each user (or its absence) is kept `ttl` seconds, so a deactivation takes effect within
    that time; past `max_entries` users, the least recently used go first, so the memory stays
    bounded however many users a process sees."""

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
        self._entries: OrderedDict[uuid.UUID, tuple[float, User | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(
        self, user_id: uuid.UUID, load: Callable[[uuid.UUID], Awaitable[User | None]]
    ) -> User | None:
        """The cached user, or `load(user_id)` once the entry is missing or stale."""
        entry = self._entries.get(user_id)
        if entry is not None and entry[0] >= self._clock():
            self._entries.move_to_end(user_id)
            return entry[1]
        user = await load(user_id)
        self._entries[user_id] = (self._clock() + self.ttl, user)
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return user

    def forget(self, user_id: uuid.UUID) -> None:
        """Drop the user's entry (changed in this process: read it again next time)."""
        self._entries.pop(user_id, None)
