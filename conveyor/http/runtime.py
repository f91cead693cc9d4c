"""Running blocking database calls off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import ChainMapProxy

from conveyor.http.keys import CONTAINER

T = TypeVar("T")


async def run_db(state: ChainMapProxy, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn(db, *args, **kwargs)` on the database thread pool.

    `state` is `request.config_dict`: the resources live on the root app, and a request
    routed to a sub-app sees them only through it."""
    container = state[CONTAINER]
    call = functools.partial(fn, container.db, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(container.db_executor, call)
