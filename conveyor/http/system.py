"""Operational routes: liveness, readiness, Prometheus metrics, the OpenAPI document, the
keys that verify API tokens."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from conveyor.http.keys import CONTAINER, METRICS, OPENAPI, PROBE_EXECUTOR, READINESS, TOKENS
from conveyor.http.pages import asset
from conveyor.http.routes import JSON, Answer, Parameter, RouteTable
from conveyor.http.schemas import Health, Readiness

logger = logging.getLogger(__name__)

#: The root app's routes; it authenticates nobody, so each of them must be public.
routes = RouteTable(tag="operations")

READY_TIMEOUT_SECONDS = 3.0
#: Verifiers may keep the key set this long: a new key is published as public-only for longer
#: than this before it signs (see docs/signing-keys.md).
JWKS_CACHE_CONTROL = "public, max-age=300"


@routes.get("/healthz", public=True, answers={200: Answer("Alive", Health)})
async def healthz(request: web.Request) -> web.Response:
    """The process is alive (no dependency is checked)."""
    return web.json_response(Health().model_dump())


@routes.get(
    "/readyz",
    public=True,
    answers={
        200: Answer("Ready: every check passed", Readiness),
        503: Answer("Not ready: the failing checks say `failed` (the log has why)", Readiness),
    },
)
async def readyz(request: web.Request) -> web.Response:
    """Ready when the database, the broker and Redis answer; 503 naming what does not (the
    errors themselves go to the log: they name internal hosts)."""
    state = request.config_dict
    checks = state[CONTAINER].readiness_checks()
    loop = asyncio.get_running_loop()
    futures = {name: loop.run_in_executor(state[PROBE_EXECUTOR], fn) for name, fn in checks.items()}
    results = {}
    last = state[READINESS]
    for name, future in futures.items():
        try:
            await asyncio.wait_for(future, READY_TIMEOUT_SECONDS)
            results[name] = "ok"
            if last.get(name) == "failed":
                logger.info("readiness check %s passes again", name)
        except Exception as exc:
            # The error names hosts and users: for the log, never for an anonymous caller.
            # Logged when the check starts failing (INFO: the dependency's own outage is the
            # WARNING), and at DEBUG while it goes on failing, so probes add no noise.
            timed_out = isinstance(exc, TimeoutError) and not str(exc)
            why = f"no answer within {READY_TIMEOUT_SECONDS:g}s" if timed_out else repr(exc)
            level = logging.DEBUG if last.get(name) == "failed" else logging.INFO
            logger.log(level, "readiness check %s failed: %s", name, why)
            results[name] = "failed"
        last[name] = results[name]
    ready = all(v == "ok" for v in results.values())
    return web.json_response(
        Readiness(status="ok" if ready else "unavailable", checks=results).model_dump(),
        status=200 if ready else 503,
    )


@routes.get(
    "/metrics",
    public=True,
    answers={
        200: Answer(
            "Prometheus text exposition",
            content_type=CONTENT_TYPE_LATEST,
            schema={"type": "string"},
        )
    },
)
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition. It never waits on the database: the database-derived
    series are the last reading of a background thread, absent while the database fails."""
    registry = request.config_dict[METRICS].registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


@routes.get(
    "/openapi.json",
    public=True,
    answers={200: Answer("This document", content_type=JSON, schema={"type": "object"})},
)
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every route."""
    return web.Response(body=request.config_dict[OPENAPI], content_type="application/json")


@routes.get(
    "/.well-known/jwks.json",
    public=True,
    answers={
        200: Answer(
            "The JWK Set (RFC 7517) of every key that verifies API tokens: the signing key "
            "first, then keys about to sign or retired (public halves only)",
            content_type=JSON,
            schema={"type": "object", "required": ["keys"]},
            headers={"Cache-Control": JWKS_CACHE_CONTROL},
        )
    },
)
async def jwks(request: web.Request) -> web.Response:
    """The public keys of API tokens, for services that verify them on their own; a token's
    `kid` header names its key."""
    keys = request.config_dict[TOKENS].config.keys
    return web.json_response(keys.jwks(), headers={"Cache-Control": JWKS_CACHE_CONTROL})


#: A static file asked for with its current content hash never changes.
IMMUTABLE = "public, max-age=31536000, immutable"


@routes.get(
    "/static/{name}",
    public=True,
    summary="A stylesheet or script of the pages",
    answers={
        200: Answer("The file", content_type=None),
        304: Answer("Not modified", content_type=None),
    },
    parameters=(
        Parameter("name", "path", {"type": "string"}, "The file's name", required=True),
        Parameter("v", "query", {"type": "string"}, "Its content hash, as the pages link it"),
    ),
    errors={404: "No such file"},
)
async def static_file(request: web.Request) -> web.Response:
    """The pages' CSS and script, served by the app (no CDN). Asked for with its content hash
    (`?v=`, as the pages link it), a file may be cached for a year; otherwise browsers check
    it again each time (ETag)."""
    found = asset(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    etag = f'"{found.digest}"'
    current = request.query.get("v") == found.digest
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE if current else "no-cache"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, content_type=found.content_type, headers=headers)
