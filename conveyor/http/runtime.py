"""Running blocking database calls off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from conveyor.http.keys import CONTAINER

T = TypeVar("T")


async def run_db(app: web.Application, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn(db, *args, **kwargs)` on the database thread pool."""
    container = app[CONTAINER]
    call = functools.partial(fn, container.db, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(container.db_executor, call)
