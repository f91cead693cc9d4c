"""The HTTP server under the app: time limits on receiving a request, and the requests that
aiohttp's parser refuses answered as problems.

aiohttp's own protocol gives a client any time to send its headers and its body, answers
what its parser refuses (a header over 8 KB, a control character, an unknown method) with
text/plain that echoes the offending bytes, and logs each with a traceback. `GuardedRequestHandler`
bounds both times and answers those requests with a problem document and one log line;
`conveyor web` and `conveyor dev` serve through `make_runner`, which uses it.
"""

from __future__ import annotations

import asyncio
import logging
import os
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
from aiohttp.streams import StreamReader
from prometheus_client import Counter

from conveyor import __version__
from conveyor.errors import BadRequestError, ConveyorError
from conveyor.http.keys import METRICS
from conveyor.http.middleware import NO_STORE, SECURITY_HEADERS, problem
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


class RequestTimeoutError(ConveyorError):
    """The client did not send the request body within the time allowed."""

    status = 408
    title = "Request timeout"


def parse_error(exc: BaseException | None) -> tuple[str, str]:
    """(part of the request, reason) for an error of aiohttp's request parser."""
    for kind, part, reason in PARSE_ERRORS:
        if isinstance(exc, kind):
            return part, reason
    return "request", "a malformed HTTP request"


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's protocol with two time limits and problem answers for parser errors.

    - Headers: a connection must complete a request's headers within `header_timeout`
      seconds of connecting, or of the request's first byte; otherwise it is closed.
    - Body: a request's body must arrive within `body_timeout` seconds of its headers;
      otherwise reading it raises RequestTimeoutError (answered 408) and the connection
      closes after the answer.

    A timer exists only while headers or a body are incomplete, so a request that arrives
    whole costs nothing but the count of parsed requests compared."""

    __slots__ = (
        "_body",
        "_body_timeout",
        "_body_timer",
        "_header_timeout",
        "_header_timer",
        "_rejected",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        header_timeout: float,
        body_timeout: float,
        rejected: Counter | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._rejected = rejected
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  #: the body `_body_timer` waits for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_timer = self._loop.call_later(self._header_timeout, self._headers_overdue)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._stop_body_timer()
        super().connection_lost(exc)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body = None

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._body is not None and self._body.is_eof():  # the body came in time
            self._stop_body_timer()
        if self._request_count != parsed:  # a request's headers are complete
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            # Only the last request parsed can still be waiting for its body.
            payload = self._messages[-1][1] if self._messages else None
            if isinstance(payload, StreamReader) and not payload.is_eof():
                self._stop_body_timer()
                self._body = payload
                self._body_timer = self._loop.call_later(self._body_timeout, self._body_overdue)
        elif data and self._header_timer is None and self._awaiting_request():
            # The first bytes of the next request on a kept-alive connection.
            self._header_timer = self._loop.call_later(self._header_timeout, self._headers_overdue)

    def _awaiting_request(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer[0]) if isinstance(peer, tuple) else "unknown"

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if not self._awaiting_request():  # its headers came: a request is being handled
            return
        logger.info(
            "closed a connection from %s: no complete request headers within %gs",
            self._peer(),
            self._header_timeout,
        )
        if self._rejected is not None:
            self._rejected.labels("header_timeout").inc()
        self.force_close()

    def _body_overdue(self) -> None:
        payload, self._body, self._body_timer = self._body, None, None
        if payload is None or payload.is_eof() or self.transport is None:
            return
        logger.info(
            "request body from %s not received within %gs", self._peer(), self._body_timeout
        )
        request = self._current_request
        if request is not None and request.content is payload:
            # Its handler runs: reading the body raises, and the error middleware answers
            # 408. Nothing waits for the rest of the body after that answer.
            self._lingering_time = 0.0
            self.close()
            payload.set_exception(
                RequestTimeoutError(
                    f"the request body did not arrive within {self._body_timeout:g} seconds"
                )
            )
        else:  # queued behind another request, or answered already: nobody to answer
            self.force_close()

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
        response.headers["Cache-Control"] = NO_STORE
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


class ListenError(Exception):
    """The server could not listen on host:port (the port is taken, the host is not an
    address of this machine or not a name, a port below 1024 without privileges)."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {error}")
        self.host = host
        self.port = port
        self.error = error


def make_runner(app: web.Application, settings: Settings, **kwargs: Any) -> web.AppRunner:
    """The runner of `conveyor web` and `conveyor dev`: no access log, keep-alive for
    KEEPALIVE_SECONDS, and the time limits of `settings`."""
    return GuardedRunner(
        app,
        access_log=None,
        keepalive_timeout=KEEPALIVE_SECONDS,
        header_timeout=settings.http_header_timeout_seconds,
        body_timeout=settings.http_body_timeout_seconds,
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
    `stopping()` when the signal came. ListenError when it cannot listen."""
    runner = make_runner(app, settings, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:  # socket.gaierror included: a host that does not resolve
            raise ListenError(host, port, exc) from exc
        bound = runner.addresses[0][1] if runner.addresses else port
        logger.info(
            "listening on http://%s:%d (pid %d, conveyor %s)",
            host,
            bound,
            os.getpid(),
            __version__,
            extra={"host": host, "port": bound, "pid": os.getpid(), "version": __version__},
        )
        if started is not None:
            started(bound)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("stopping: open requests have up to %gs to finish", shutdown_timeout)
        if stopping is not None:
            stopping()
    finally:
        await runner.cleanup()
