"""The HTTP server under the app: the requests that aiohttp's parser refuses answered as
problems.

aiohttp's own protocol answers what its parser refuses (a header over 8 KB, a control
character, an unknown method) with text/plain that echoes the offending bytes, and logs each
with a traceback. `GuardedRequestHandler` answers those requests with a problem document and
one log line; `conveyor web` and `conveyor dev` serve through `make_runner`, which uses it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from prometheus_client import Counter

from conveyor.errors import BadRequestError
from conveyor.http.keys import METRICS
from conveyor.http.middleware import SECURITY_HEADERS, problem
from conveyor.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds an idle keep-alive connection stays open between requests (web.run_app's default).
KEEPALIVE_SECONDS = 75.0

#: What to say of each parser error: the part of the request at fault and why. Never the
#: exception's text: it quotes the request's bytes, an Authorization header among them.
PARSE_ERRORS: tuple[tuple[type[Exception], str, str], ...] = (
    (BadHttpMethod, "method", "not a method this server knows, or the request is not HTTP"),
    (BadStatusLine, "request line", "a malformed request line or HTTP version"),
    (InvalidURLError, "target", "a malformed request target"),
    (LineTooLong, "headers", "the request line or a header field is too long"),
    (InvalidHeader, "headers", "a malformed header field"),
    (PayloadEncodingError, "body", "a malformed body encoding"),
    (
        BadHttpMessage,
        "headers",
        "malformed headers: a control character, a duplicate or conflicting field, "
        "or too many fields",
    ),
)


def parse_error(exc: BaseException | None) -> tuple[str, str]:
    """(part of the request, reason) for an error of aiohttp's request parser."""
    for kind, part, reason in PARSE_ERRORS:
        if isinstance(exc, kind):
            return part, reason
    return "request", "a malformed HTTP request"


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's protocol with problem answers for parser errors."""

    __slots__ = ("_rejected",)

    def __init__(
        self, manager: web.Server, *, rejected: Counter | None = None, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._rejected = rejected

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A problem document for a request the parser refused (logged in one line, its
        bytes neither echoed nor logged) or for an error that escaped the app (logged with
        its traceback)."""
        if status >= 500:
            logger.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
            response = problem(
                status, "Internal error", "an unexpected error occurred; it was logged"
            )
        else:
            part, reason = parse_error(exc)
            logger.info(
                "refused a malformed request from %s: %s (%s)",
                request.remote,
                reason,
                type(exc).__name__,
            )
            if self._rejected is not None:
                self._rejected.labels("malformed").inc()
            response = problem(
                status,
                BadRequestError.title if status == 400 else _phrase(status),
                f"the request is not valid HTTP/1.1: {reason}",
                [{"field": part, "message": reason}],
            )
        # Some of a response went out already: the connection is broken, as aiohttp has it.
        if request.writer.output_size > 0:
            raise ConnectionError("a response was partly sent; cannot send an error after it")
        response.headers.update(SECURITY_HEADERS)
        response.force_close()
        return response


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class GuardedServer(web.Server):
    """aiohttp's low-level server, with `GuardedRequestHandler` as its protocol."""

    def __call__(self) -> web.RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server is a `GuardedServer`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


def make_runner(app: web.Application, settings: Settings, **kwargs: Any) -> web.AppRunner:
    """The runner of `conveyor web` and `conveyor dev`: no access log, and keep-alive for
    KEEPALIVE_SECONDS."""
    return GuardedRunner(
        app,
        access_log=None,
        keepalive_timeout=KEEPALIVE_SECONDS,
        rejected=app[METRICS].rejected,
        **kwargs,
    )


async def serve(
    app: web.Application,
    settings: Settings,
    host: str,
    port: int,
    *,
    shutdown_timeout: float,
    started: Callable[[int], None] | None = None,
    stopping: Callable[[], None] | None = None,
) -> None:
    """Serve `app` on host:port until SIGINT or SIGTERM, then drain for up to
    `shutdown_timeout` seconds; `started(port)` is called once it listens, and
    `stopping()` when the signal came."""
    runner = make_runner(app, settings, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        if started is not None:
            started(runner.addresses[0][1] if runner.addresses else port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if stopping is not None:
            stopping()
    finally:
        await runner.cleanup()
