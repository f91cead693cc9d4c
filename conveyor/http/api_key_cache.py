"""API keys by their hash for a few seconds, in a bounded LRU: a key's request costs no query,
and its `last_used_at` is written at most once a minute."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from conveyor.http.user_cache import TtlCache
from conveyor.models import ApiKey
from conveyor.services.api_keys import TOUCH_INTERVAL
from conveyor.services.sessions import hash_secret


class ApiKeyCache(TtlCache[str, ApiKey | None]):
    """Each key's row (or its absence) is kept `ttl` seconds under the key's hash, so a
    revocation in another process takes effect within that time (in this one, `drop_id` makes
    it immediate); past `max_entries` keys, the least recently used go first."""

    def __init__(
        self,
        *,
        ttl: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ttl=ttl, max_entries=max_entries, clock=clock)
        self._touched: OrderedDict[uuid.UUID, float] = OrderedDict()

    async def get(self, key: str, load: Callable[[str], Awaitable[ApiKey | None]]) -> ApiKey | None:
        """The cached row of `key`, or `load(key)` once the entry is missing or stale."""
        # no key in clear stays in memory: entries are kept under its hash
        return await super().get(hash_secret(key), lambda _hashed: load(key))

    def drop_id(self, key_id: uuid.UUID) -> None:
        """Forget the key with this id (revoked here: refused from the next request on)."""
        for hashed, (_, row) in list(self._entries.items()):
            if row is not None and row.id == key_id:
                self.drop(hashed)

    def due_for_touch(self, key_id: uuid.UUID) -> bool:
        """Whether this process should record a use of the key now (first use, or a minute
        after the last one it recorded); if so, counts this as that record."""
        now = self._clock()
        last = self._touched.get(key_id)
        if last is not None and now - last < TOUCH_INTERVAL.total_seconds():
            return False
        self._touched[key_id] = now
        self._touched.move_to_end(key_id)
        while len(self._touched) > self.max_entries:
            self._touched.popitem(last=False)
        return True
