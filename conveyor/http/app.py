"""The aiohttp application factory: the composition root of the web process."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import dramatiq
from aiohttp import web

from conveyor.broker import BrokerEnqueuer, build_broker
from conveyor.db import make_engine, make_sessionmaker
from conveyor.events import Events, MemoryEvents, RedisEvents
from conveyor.http import admin, api, system
from conveyor.http.keys import (
    BATCHER,
    BROKER,
    DB,
    DB_EXECUTOR,
    ENQUEUER,
    EVENTS,
    METRICS,
    OPENAPI,
    PROBE_EXECUTOR,
    REGISTRY,
    ROUTE_TABLES,
    SETTINGS,
    TOKENS,
    USER_CACHE,
)
from conveyor.http.metrics import Metrics
from conveyor.http.middleware import observe, problems
from conveyor.http.openapi import build_openapi
from conveyor.http.routes import RouteTable
from conveyor.http.user_cache import UserCache
from conveyor.registry import JOBS, Registry
from conveyor.services.auth import TokenConfig, TokenVerifier
from conveyor.services.batching import SubmitBatcher
from conveyor.services.sweeper import Sweeper
from conveyor.settings import Settings


def token_config(settings: Settings) -> TokenConfig:
    if settings.secret_key is None:
        raise SystemExit("CONVEYOR_SECRET_KEY is not set: it signs the API tokens")
    return TokenConfig(
        secret=settings.secret_key.get_secret_value(),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl=dt.timedelta(seconds=settings.token_ttl_seconds),
    )


def route_tables() -> dict[str, RouteTable]:
    """The route table of each app by its mount prefix ("" for the root app)."""
    return {"": system.routes, api.PREFIX: api.routes, admin.PREFIX: admin.routes}


def create_app(
    settings: Settings,
    *,
    broker: dramatiq.Broker | None = None,
    events: Events | None = None,
    registry: Registry = JOBS,
    sweeper: bool = True,
) -> web.Application:
    """The web app; `broker` and `events` default to those the settings describe."""
    import conveyor.actors.all  # noqa: F401  (every job type, so the registry is complete)

    # The root app holds the state (sub-app handlers read it through request.config_dict),
    # the public operational routes, and the sub-apps, each with its own errors and auth.
    app = web.Application(middlewares=[observe, problems], client_max_size=settings.max_body_bytes)
    tables = route_tables()
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[TOKENS] = TokenVerifier(token_config(settings))
    app[METRICS] = Metrics()
    app[ROUTE_TABLES] = tables
    app[OPENAPI] = build_openapi(settings, registry, tables)
    app[USER_CACHE] = UserCache()
    app[BROKER] = broker or build_broker(settings.broker_url, namespace=settings.broker_namespace)
    app[EVENTS] = events or (
        RedisEvents(settings.redis_url, settings.redis_prefix)
        if settings.redis_url
        else MemoryEvents()
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
        app[DB] = make_sessionmaker(engine)
        app[PROBE_EXECUTOR] = ThreadPoolExecutor(3, thread_name_prefix="conveyor-probe")
        app[DB_EXECUTOR] = ThreadPoolExecutor(settings.db_threads, thread_name_prefix="conveyor-db")
        enqueuer = BrokerEnqueuer(app[BROKER], threads=settings.publish_threads)
        app[ENQUEUER] = enqueuer
        app[BATCHER] = SubmitBatcher(app[DB])
        loop_sweeper = None
        if sweeper:
            loop_sweeper = Sweeper(
                app[DB],
                enqueuer,
                app[EVENTS],
                interval=settings.sweep_interval_seconds,
                grace=dt.timedelta(seconds=settings.publish_grace_seconds),
                requeue_after=dt.timedelta(seconds=settings.requeue_after_seconds),
                max_worker_losses=settings.max_worker_losses,
            )
            loop_sweeper.start()
        yield
        if loop_sweeper is not None:
            loop_sweeper.stop()
        app[BATCHER].close()
        enqueuer.close()
        await app[EVENTS].close()
        app[DB_EXECUTOR].shutdown(wait=True)
        app[PROBE_EXECUTOR].shutdown(wait=False, cancel_futures=True)
        engine.dispose()

    app.cleanup_ctx.append(resources)
    system.routes.install(app, authenticate=None)
    app.add_subapp(api.PREFIX, api.build_api())
    app.add_subapp(admin.PREFIX, admin.build_admin())
    return app
