"""The user cache of the bearer authentication: entries expire, and their number is bounded."""

from __future__ import annotations

import uuid

from conveyor.http.keys import USER_CACHE
from conveyor.http.user_cache import UserCache
from conveyor.models import Role, User
from tests.stack import Stack


class Loader:
    """Loads users by id, counting the loads."""

    def __init__(self) -> None:
        self.loads: list[uuid.UUID] = []

    async def __call__(self, user_id: uuid.UUID) -> User | None:
        self.loads.append(user_id)
        return User(id=user_id, email=f"{user_id}@example.com", role=Role.MEMBER, active=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_cached_user_is_not_loaded_again_until_it_expires() -> None:
    clock, load = Clock(), Loader()
    cache = UserCache(ttl=10.0, clock=clock)
    user_id = uuid.uuid4()
    first = await cache.get(user_id, load)
    clock.now += 10.0
    assert await cache.get(user_id, load) is first
    assert load.loads == [user_id]
    clock.now += 0.1
    await cache.get(user_id, load)
    assert load.loads == [user_id, user_id]


async def test_an_unknown_user_is_cached_too() -> None:
    calls = []

    async def nobody(user_id: uuid.UUID) -> User | None:
        calls.append(user_id)
        return None

    cache = UserCache()
    user_id = uuid.uuid4()
    assert await cache.get(user_id, nobody) is None
    assert await cache.get(user_id, nobody) is None
    assert len(calls) == 1


async def test_the_cache_keeps_at_most_max_entries_dropping_the_least_recently_used() -> None:
    load = Loader()
    cache = UserCache(max_entries=3)
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    for user_id in (a, b, c):
        await cache.get(user_id, load)
    await cache.get(a, load)  # a is now the most recently used; b the least
    await cache.get(d, load)
    assert len(cache) == 3
    load.loads.clear()
    for user_id in (a, c, d):
        await cache.get(user_id, load)
    assert load.loads == []
    await cache.get(b, load)
    assert load.loads == [b]


async def test_many_users_never_grow_the_cache_past_its_bound() -> None:
    cache = UserCache(max_entries=100)
    load = Loader()
    for _ in range(1000):
        await cache.get(uuid.uuid4(), load)
    assert len(cache) == 100


async def test_the_app_s_user_cache_is_bounded(embedded_stack: Stack) -> None:
    stack = embedded_stack
    cache = stack.client.app[USER_CACHE]
    assert isinstance(cache, UserCache)
    assert cache.max_entries == 10_000
    assert cache.ttl == 10.0
    for token in (stack.admin_token, stack.member_token, stack.member_token):
        assert (await stack.client.get("/v1/job-types", headers=stack.headers(token))).status == 200
    assert len(cache) == 2
