"""Running blocking database calls off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from conveyor.http.keys import DB, DB_EXECUTOR

T = TypeVar("T")


async def run_db(app: web.Application, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn(app[DB], *args, **kwargs)` on the database thread pool."""
    loop = asyncio.get_running_loop()
    call = functools.partial(fn, app[DB], *args, **kwargs)
    return await loop.run_in_executor(app[DB_EXECUTOR], call)
