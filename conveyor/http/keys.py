"""Typed keys of application and request state."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import dramatiq
from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from conveyor.events import Events
from conveyor.http.metrics import Metrics
from conveyor.http.routes import RouteTable
from conveyor.http.user_cache import UserCache
from conveyor.models import User
from conveyor.registry import Registry
from conveyor.services.auth import TokenVerifier
from conveyor.services.batching import SubmitBatcher
from conveyor.services.jobs import Enqueuer
from conveyor.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", sessionmaker[Session])
DB_EXECUTOR = web.AppKey("db_executor", ThreadPoolExecutor)
#: Readiness probes run apart, so a hanging dependency cannot starve the database calls.
PROBE_EXECUTOR = web.AppKey("probe_executor", ThreadPoolExecutor)
REGISTRY = web.AppKey("registry", Registry)
ENQUEUER = web.AppKey("enqueuer", Enqueuer)
EVENTS = web.AppKey("events", Events)
BROKER = web.AppKey("broker", dramatiq.Broker)
TOKENS = web.AppKey("tokens", TokenVerifier)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI = web.AppKey("openapi", bytes)
USER_CACHE = web.AppKey("user_cache", UserCache)
BATCHER = web.AppKey("batcher", SubmitBatcher)
#: The route table of each app by its mount prefix ("" for the root app).
ROUTE_TABLES: web.AppKey[dict[str, RouteTable]] = web.AppKey("route_tables")

USER = web.RequestKey("user", User)
