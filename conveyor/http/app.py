"""The aiohttp application factory: the web process's app on its container's resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from conveyor.bootstrap import Container
from conveyor.broker import outage_of
from conveyor.http import admin, api, home, system
from conveyor.http.api.stream import end_streams
from conveyor.http.api_key_cache import ApiKeyCache
from conveyor.http.broker_metrics import register_broker_metrics
from conveyor.http.keys import (
    ACCESS_LOG,
    API_KEY_CACHE,
    BROWSER_SESSIONS,
    CONTAINER,
    METRICS,
    NOTIFICATION_TEMPLATES,
    OIDC,
    OPENAPI,
    PROBE_EXECUTOR,
    READINESS,
    ROUTE_TABLES,
    SESSION_CACHE,
    SESSION_COOKIES,
    STREAMS,
    THROTTLES,
    TOKENS,
    UNSUBSCRIBE_LINKS,
    USER_CACHE,
)
from conveyor.http.metrics import Metrics
from conveyor.http.middleware import observe, problems, secure_headers
from conveyor.http.oidc_fetch import OidcFetcher
from conveyor.http.openapi import build_openapi
from conveyor.http.routes import RouteTable
from conveyor.http.session_cookie import SessionCookies
from conveyor.http.user_cache import SESSION_TTL, BrowserSessionCache, SessionCache, UserCache
from conveyor.notifications import resources as notification_resources
from conveyor.notifications.unsubscribe import UnsubscribeLinks
from conveyor.services.accounts import Throttles
from conveyor.services.auth import TokenConfig, TokenVerifier


def route_tables() -> dict[str, RouteTable]:
    """The route table of each app by its mount prefix ("" for the root app)."""
    return {
        "": system.routes,
        api.PREFIX: api.routes,
        admin.PREFIX: admin.routes,
        home.PREFIX: home.routes,
    }


def create_app(container: Container, *, sweeper: bool = True) -> web.Application:
    """The web app on `container`'s resources (its caller owns the container and closes
    it); with `sweeper`, the container's sweeper runs while the app does."""
    settings = container.settings
    # The root app holds the state (sub-app handlers read it through request.config_dict),
    # the public operational routes, and the sub-apps, each with its own errors and auth.
    app = web.Application(middlewares=[observe, problems], client_max_size=settings.max_body_bytes)
    tables = route_tables()
    app[CONTAINER] = container
    app[TOKENS] = TokenVerifier(TokenConfig.of(settings))
    app[METRICS] = Metrics()
    app[THROTTLES] = Throttles.of(settings)
    app[ACCESS_LOG] = settings.access_log
    app[METRICS].include(container.metrics.registry)
    app[METRICS].include_database(container.stats.current)
    register_broker_metrics(app[METRICS].registry, outage_of(container.broker))
    app[ROUTE_TABLES] = tables
    app[OPENAPI] = build_openapi(settings, container.registry, tables)
    app[USER_CACHE] = UserCache()
    app[SESSION_CACHE] = SessionCache(ttl=SESSION_TTL)
    app[SESSION_COOKIES] = SessionCookies.of(settings)
    app[BROWSER_SESSIONS] = BrowserSessionCache()
    if settings.oidc_providers:  # the shared client (and its loop) only where logins need it
        app[OIDC] = OidcFetcher(container.http)
    app[API_KEY_CACHE] = ApiKeyCache()
    app[NOTIFICATION_TEMPLATES] = notification_resources.templates(settings)
    app[UNSUBSCRIBE_LINKS] = UnsubscribeLinks.of(settings)
    app[READINESS] = {}
    app[STREAMS] = set()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[PROBE_EXECUTOR] = ThreadPoolExecutor(3, thread_name_prefix="conveyor-probe")
        container.submissions  # noqa: B018  (built before the first request needs it)
        container.start_stats()
        if sweeper:
            container.start_sweeper()
        yield
        await container.announcements.stop_listening()
        app[PROBE_EXECUTOR].shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(end_streams)
    # Every answer of the three apps: root's signal runs for sub-apps' responses too.
    app.on_response_prepare.append(secure_headers)
    system.routes.install(app, authenticate=None)
    app.add_subapp(api.PREFIX, api.build_api())
    app.add_subapp(admin.PREFIX, admin.build_admin())
    app.add_subapp(home.PREFIX, home.build_home())
    return app
