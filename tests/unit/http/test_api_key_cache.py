"""The API key cache of the bearer authentication: a TtlCache kept under the keys' hashes,
whose entries expire, whose size is bounded, and whose keys' uses are recorded once a minute."""

from __future__ import annotations

import uuid

from conveyor.http.api_key_cache import ApiKeyCache
from conveyor.http.user_cache import TtlCache
from conveyor.models import ApiKey
from conveyor.services.sessions import hash_secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Loads a row per key, counting the loads."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.rows: dict[str, ApiKey] = {}

    async def __call__(self, key: str) -> ApiKey | None:
        self.loads.append(key)
        return self.rows.setdefault(key, ApiKey(id=uuid.uuid4(), prefix=key[:16], scopes=[]))


async def test_rows_are_kept_under_the_key_s_hash_until_they_expire() -> None:
    clock, load = Clock(), Loader()
    cache = ApiKeyCache(ttl=5.0, clock=clock)
    assert isinstance(cache, TtlCache)
    first = await cache.get("cvk_0123456789ab_secret", load)
    clock.now += 5.0
    assert await cache.get("cvk_0123456789ab_secret", load) is first
    assert load.loads == ["cvk_0123456789ab_secret"]
    assert list(cache._entries) == [hash_secret("cvk_0123456789ab_secret")]  # never in clear
    clock.now += 0.1
    await cache.get("cvk_0123456789ab_secret", load)
    assert len(load.loads) == 2


async def test_a_revoked_key_is_dropped_by_its_id_and_the_size_is_bounded() -> None:
    load = Loader()
    cache = ApiKeyCache(max_entries=2)
    a, b, c = [await cache.get(f"cvk_{n}", load) for n in range(3)]
    assert len(cache) == 2 and a is not None and b is not None and c is not None
    cache.drop_id(c.id)
    assert len(cache) == 1
    load.loads.clear()
    assert await cache.get("cvk_1", load) is b and load.loads == []
    await cache.get("cvk_2", load)
    assert load.loads == ["cvk_2"]


def test_a_key_s_use_is_due_for_recording_once_a_minute() -> None:
    clock = Clock()
    cache = ApiKeyCache(clock=clock)
    key_id = uuid.uuid4()
    assert cache.due_for_touch(key_id)
    clock.now += 59.0
    assert not cache.due_for_touch(key_id)
    clock.now += 1.0
    assert cache.due_for_touch(key_id)
