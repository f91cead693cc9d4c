"""The aiohttp application factory: the composition root of the web process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from conveyor.bootstrap import Container
from conveyor.http import jobs, system
from conveyor.http.keys import CONTAINER, METRICS, OPENAPI, PROBE_EXECUTOR, TOKENS, USER_CACHE
from conveyor.http.metrics import Metrics
from conveyor.http.middleware import authenticate, observe, problems
from conveyor.http.openapi import build_openapi
from conveyor.services.auth import TokenConfig, TokenVerifier


def create_app(container: Container, *, sweeper: bool = True) -> web.Application:
    """The web app on `container`'s resources (which its caller owns and closes); with
    `sweeper`, the container's sweeper runs while the app does."""
    settings = container.settings
    app = web.Application(
        middlewares=[observe, problems, authenticate], client_max_size=settings.max_body_bytes
    )
    app[CONTAINER] = container
    app[TOKENS] = TokenVerifier(TokenConfig.of(settings))
    app[METRICS] = Metrics()
    app[OPENAPI] = build_openapi(container.registry)
    app[USER_CACHE] = {}

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[PROBE_EXECUTOR] = ThreadPoolExecutor(3, thread_name_prefix="conveyor-probe")
        container.submissions  # noqa: B018  (built before the first request)
        if sweeper:
            container.start_sweeper()
        yield
        await container.announcements.stop_listening()
        app[PROBE_EXECUTOR].shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(resources)
    app.add_routes(jobs.routes)
    app.add_routes(system.routes)
    return app
