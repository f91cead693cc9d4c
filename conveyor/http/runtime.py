"""Running blocking database calls off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import ChainMapProxy

from conveyor.http.keys import DB, DB_EXECUTOR

T = TypeVar("T")


async def run_db(state: ChainMapProxy, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn(state[DB], *args, **kwargs)` on the database thread pool.

    `state` is `request.config_dict`: the resources live on the root app, and a request
    routed to a sub-app sees them only through it."""
    loop = asyncio.get_running_loop()
    call = functools.partial(fn, state[DB], *args, **kwargs)
    return await loop.run_in_executor(state[DB_EXECUTOR], call)
