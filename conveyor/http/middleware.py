"""Request middlewares: request id and metrics; errors rendered as problem+json (or pages)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import ValidationError
from sqlalchemy.exc import DataError, InterfaceError, OperationalError

from conveyor import logs
from conveyor.errors import ConveyorError, InvalidTokenError, field_errors
from conveyor.http.keys import ACCESS_LOG, HELD, METRICS

logger = logging.getLogger(__name__)
#: One line per request, at its end (a long-poll's or an event stream's too, once).
access_logger = logging.getLogger("conveyor.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROBLEM_TYPE = "application/problem+json"
BEARER_CHALLENGE = 'Bearer realm="conveyor"'
#: The challenge for a token that was sent but refused (RFC 6750 section 3.1).
INVALID_TOKEN_CHALLENGE = f'{BEARER_CHALLENGE}, error="invalid_token"'
#: On every response: no version for fingerprinting, and no content sniffing.
SECURITY_HEADERS = {
    "Server": "conveyor",
    "X-Content-Type-Options": "nosniff",
}
#: The cache policy of every response that sets none: each answer is about a moment of some
#: job's life, and most are some user's own.
NO_STORE = "no-store"
#: The status counted (and logged at INFO) for a request whose client went away mid-request:
#: nginx's "client closed request". No answer reaches the client.
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True)
class Failure:
    """An error answer before it is rendered: as a problem document, or as a page."""

    status: int
    title: str
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


Renderer = Callable[[Failure], web.Response]


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    response = web.json_response(body, status=status, content_type=PROBLEM_TYPE)
    if headers:
        response.headers.update(headers)
    return response


def problem_of(failure: Failure) -> web.Response:
    return problem(failure.status, failure.title, failure.detail, failure.errors, failure.headers)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id for logs, count the request by route template and status, and log
    it once it ends (unless `CONVEYOR_ACCESS_LOG` is off)."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    token = logs.request_id.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        state = request.config_dict
        metrics = state[METRICS]
        metrics.requests.labels(route, request.method, str(status)).inc()
        held = request.get(HELD)
        if held is None:
            metrics.latency.labels(route, request.method).observe(elapsed)
        else:  # a long poll or an event stream: how long it was open is no latency
            metrics.held.labels(route, held).observe(elapsed)
        if state[ACCESS_LOG] and access_logger.isEnabledFor(logging.INFO):
            _log_access(request, request_id, route, status, elapsed)
        logs.request_id.reset(token)


def _log_access(
    request: web.Request, request_id: str, route: str, status: int, elapsed: float
) -> None:
    """The access log line: `GET /v1/jobs/0190… 200 1.4ms from 10.0.0.7`, each part (and the
    request id) a field of the JSON line (`route`: the route's template)."""
    remote = request.remote or "-"
    duration_ms = round(elapsed * 1000, 1)
    access_logger.info(
        "%s %s %d %.1fms from %s",
        request.method,
        request.path,
        status,
        duration_ms,
        remote,
        extra={
            "method": request.method,
            "route": route,
            "path": request.path,
            "status": status,
            "duration_ms": duration_ms,
            "remote": remote,
            "request_id": request_id,
        },
    )


async def secure_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the headers of SECURITY_HEADERS, and `Cache-Control: no-store`
    unless the handler chose a policy (the event stream's `no-cache`)."""
    headers = response.headers
    headers.update(SECURITY_HEADERS)
    if "Cache-Control" not in headers:
        headers["Cache-Control"] = NO_STORE


def _challenge(exc: ConveyorError) -> str:
    return INVALID_TOKEN_CHALLENGE if isinstance(exc, InvalidTokenError) else BEARER_CHALLENGE


def failure_of(request: web.Request, exc: Exception) -> Failure:
    """What to answer for an error a handler raised (an unexpected one is logged, once)."""
    if isinstance(exc, ConveyorError):
        headers = {"WWW-Authenticate": _challenge(exc)} if exc.status == 401 else {}
        if exc.status == 408:  # the request was not read whole: the connection closes
            headers = {"Connection": "close"}
        return Failure(exc.status, exc.title, exc.detail, exc.errors, {**headers, **exc.headers})
    if isinstance(exc, ConnectionError) and request.transport is None:
        # The client went away (while sending its body, say): not a server error.
        logger.info(
            "client closed the connection during %s %s: %r", request.method, request.path, exc
        )
        return Failure(
            CLIENT_CLOSED_REQUEST,
            "Client closed request",
            "the client closed the connection before the request was handled",
        )
    if isinstance(exc, ValidationError):
        return Failure(
            422, "Unprocessable content", "the request has invalid fields", field_errors(exc)
        )
    if isinstance(exc, web.HTTPException):
        detail = {
            404: f"no route matches {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: "the request body is larger than the server accepts",
        }.get(exc.status, exc.text or exc.reason)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return Failure(exc.status, exc.reason, detail, headers=headers)
    if isinstance(exc, DataError):  # a value the database cannot store (the checks missed it)
        logger.warning("database rejected a value on %s %s: %r", request.method, request.path, exc)
        return Failure(422, "Unprocessable content", "a value cannot be stored as given")
    if isinstance(exc, OperationalError | InterfaceError):  # the database is down or restarting
        logger.warning("database unavailable on %s %s: %r", request.method, request.path, exc)
        return Failure(
            503,
            "Service unavailable",
            "the database is unavailable; retry shortly",
            headers={"Retry-After": "5"},
        )
    logger.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return Failure(500, "Internal error", "an unexpected error occurred; it was logged")


def rendering_errors(render: Renderer) -> Middleware:
    """A middleware that answers every error (but redirects) with `render(failure)`."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return render(failure_of(request, exc))
        except Exception as exc:
            return render(failure_of(request, exc))

    return errors


#: Every error as an RFC 9457 application/problem+json answer.
problems = rendering_errors(problem_of)
