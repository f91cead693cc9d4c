"""Typed keys of application and request state."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from conveyor.bootstrap import Container
from conveyor.http.api_key_cache import ApiKeyCache
from conveyor.http.metrics import Metrics
from conveyor.http.oidc_fetch import OidcFetcher
from conveyor.http.principal import Principal
from conveyor.http.routes import RouteTable
from conveyor.http.session_cookie import SessionCookies
from conveyor.http.user_cache import BrowserSessionCache, SessionCache, UserCache
from conveyor.models import User
from conveyor.notifications.templates import Templates
from conveyor.notifications.unsubscribe import UnsubscribeLinks
from conveyor.services.accounts import Throttles
from conveyor.services.auth import TokenVerifier

#: The process's resources (database, broker, announcements, submissions...).
CONTAINER = web.AppKey("container", Container)
#: Readiness probes run apart, so a hanging dependency cannot starve the database calls.
PROBE_EXECUTOR = web.AppKey("probe_executor", ThreadPoolExecutor)
TOKENS = web.AppKey("tokens", TokenVerifier)
METRICS = web.AppKey("metrics", Metrics)
#: The attempt limits of sign-in, password reset and verification requests.
THROTTLES = web.AppKey("throttles", Throttles)
#: The notification kinds and their templates (validation and previews).
NOTIFICATION_TEMPLATES = web.AppKey("notification_templates", Templates)
#: Reads the tokens of unsubscribe links.
UNSUBSCRIBE_LINKS = web.AppKey("unsubscribe_links", UnsubscribeLinks)
OPENAPI = web.AppKey("openapi", bytes)
USER_CACHE = web.AppKey("user_cache", UserCache)
#: Whether each sign-in session is open: access tokens of an ended session are refused.
SESSION_CACHE = web.AppKey("session_cache", SessionCache)
#: Fetches what the OpenID Connect providers publish (set only when some are configured).
#: Makes and reads the browser's session cookie and the CSRF tokens of its pages.
SESSION_COOKIES = web.AppKey("session_cookies", SessionCookies)
#: The sessions that session cookies name (who, since when, by what means).
BROWSER_SESSIONS = web.AppKey("browser_sessions", BrowserSessionCache)
OIDC = web.AppKey("oidc", OidcFetcher)
API_KEY_CACHE = web.AppKey("api_key_cache", ApiKeyCache)
#: The last result of each readiness check ("ok" or "failed"), so a failure is logged when
#: it starts and when it ends, not at every probe.
READINESS: web.AppKey[dict[str, str]] = web.AppKey("readiness")
#: The route table of each app by its mount prefix ("" for the root app).
ROUTE_TABLES: web.AppKey[dict[str, RouteTable]] = web.AppKey("route_tables")

#: Whether each request is logged (`CONVEYOR_ACCESS_LOG`).
ACCESS_LOG = web.AppKey("access_log", bool)

#: The tasks of the open event streams, ended when the web process stops.
STREAMS: web.AppKey[set[asyncio.Task[object]]] = web.AppKey("streams")

#: The user a request acts for, as the services see it (with the role it acts with).
USER = web.RequestKey("user", User)
#: Who is asking: the user, the role it acts with, an API key's scopes, the session.
PRINCIPAL = web.RequestKey("principal", Principal)
#: Set by a handler that holds its request open (`wait`: a long poll; `stream`: an event
#: stream): its duration is not a request latency, and is measured apart.
HELD = web.RequestKey("held", str)
