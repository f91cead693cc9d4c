"""`Client`: the blocking Python client of the HTTP API, on the standard library's http.client
(kept-alive connections, a small pool of them, so one client may be shared by threads)."""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import http.client
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

from conveyor.client import protocol
from conveyor.client.errors import InvalidRequestError, TransportError, WaitTimeoutError
from conveyor.client.models import (
    Delivery,
    DeliveryPage,
    Event,
    Job,
    JobType,
    Notification,
    Page,
)
from conveyor.client.protocol import (
    LONG_POLL_SECONDS,
    STREAM_IDLE_SECONDS,
    JobRef,
    NotificationRef,
    Recipient,
    Request,
    Response,
    RetryPolicy,
)

#: Idle connections kept per client.
POOL_SIZE = 4
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


class Client:
    """A blocking client of Conveyor's HTTP API.

    ``Client("https://conveyor.example.com", token)`` talks to the API at that URL with that
    bearer token. `timeout` bounds connecting and each read (a long-poll's read gets the time
    it asked the server to hold on top). Connection errors and 502/503/504 answers (429 with
    Retry-After) are retried `retries` times with exponential backoff; a submission sent again
    carries the same Idempotency-Key, so it cannot create a second job. Use it as a context
    manager, or call `close()`; one client may be shared by threads.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.scheme, self.host, self.port, self.base_path = protocol.split_base_url(base_url)
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries, backoff, max_backoff)
        self.long_poll_seconds = LONG_POLL_SECONDS
        self.stream_idle_seconds = STREAM_IDLE_SECONDS
        self._token = token
        self._extra_headers = dict(headers or {})
        self._ssl = ssl_context
        self._idle: builtins.list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the idle connections; the client cannot be used afterwards."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # -- the operations --------------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        wait: float | None = None,
        idempotency_key: str | None = None,
        delay_seconds: float | None = None,
        run_at: dt.datetime | str | None = None,
    ) -> Job:
        """Submit a job of `type` with `payload`; the job as it is then.

        `wait` holds the answer up to that many seconds (at most the server's
        CONVEYOR_MAX_WAIT_SECONDS) until the job finishes. `idempotency_key` makes a repeated
        submission return the first job; without one the client makes a key of its own, so
        its own retries cannot submit twice. `delay_seconds` or `run_at` (an aware datetime)
        runs the job later. Raises `InvalidRequestError` (422) naming each bad field.
        """
        key = idempotency_key or protocol.new_idempotency_key()
        request = protocol.submit(
            type, payload, idempotency_key=key, wait=wait, delay_seconds=delay_seconds,
            run_at=run_at,
        )  # fmt: skip
        return protocol.read_job(self._send(request))

    def get(self, job: JobRef) -> Job:
        """The job (`NotFoundError` if there is none, or it is another member's)."""
        return protocol.read_job(self._send(protocol.get(job)))

    def wait(self, job: JobRef, timeout: float | None = None) -> Job:
        """The job once it has finished (succeeded, failed or cancelled).

        Long-polls the server (`?wait=..&until=finished`) until then, or until `timeout`
        seconds have passed (`WaitTimeoutError`, with the job as last seen); no `timeout`
        waits for as long as it takes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        hold = self.long_poll_seconds
        while True:
            seconds = hold
            if deadline is not None:
                seconds = min(hold, max(deadline - time.monotonic(), 0.0))
            try:
                current = self._get_waiting(job, seconds)
            except InvalidRequestError as exc:
                if "wait" not in exc.fields or hold < 1:
                    raise
                hold /= 2  # the server caps ?wait lower: ask for less, from now on
                self.long_poll_seconds = hold
                continue
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {current.id} is still {current.status} after {timeout}s", current
                )

    def _get_waiting(self, job: JobRef, seconds: float) -> Job:
        return protocol.read_job(self._send(protocol.get(job, wait=seconds, until="finished")))

    def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        type: str | Iterable[str] | None = None,
        parent: JobRef | None = None,
        include: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[Job]:
        """Every job that matches, newest first, fetching page after page (of `limit` jobs)
        as the iteration goes on. `include` may name `payload` and `result`, which a list
        leaves out otherwise."""
        cursor: str | None = None
        while True:
            page = self.list_page(
                status=status, type=type, parent=parent, include=include, limit=limit,
                cursor=cursor,
            )  # fmt: skip
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def list_page(
        self,
        *,
        status: str | Iterable[str] | None = None,
        type: str | Iterable[str] | None = None,
        parent: JobRef | None = None,
        include: str | Iterable[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """One page of jobs, newest first; pass its `next_cursor` as `cursor` (with the same
        filters) for the next page."""
        request = protocol.list_page(
            status=status, type=type, parent=parent, include=include, limit=limit, cursor=cursor
        )
        return protocol.read_page(self._send(request))

    def cancel(self, job: JobRef) -> Job:
        """Cancel the job: a waiting one at once (`cancelled`); a running one is asked to stop
        (`cancel_requested`, then `cancelled` unless it finishes first). `ConflictError` if
        it already succeeded or failed."""
        return protocol.read_job(self._send(protocol.cancel(job)))

    def retry(self, job: JobRef) -> Job:
        """Run a failed or cancelled job again (the same job, a new cycle of attempts).
        `ConflictError` if it is neither. If the request had to be sent again after a
        failure and then met a 409, the first one most likely went through: the job is
        returned as it is if it is no longer failed or cancelled."""
        response = self._send(protocol.retry(job))
        if protocol.is_retry_replayed(response):
            current = self.get(job)
            if current.status not in protocol.RETRYABLE:
                return current
        return protocol.read_job(response)

    def job_types(self) -> tuple[JobType, ...]:
        """Every job type the server runs, with its queue, limits and payload schema."""
        return protocol.read_job_types(self._send(protocol.job_types()))

    # -- notifications -----------------------------------------------------------------------

    def notify(
        self,
        kind: str,
        recipients: Iterable[Recipient],
        *,
        context: Mapping[str, Any] | None = None,
        channels: Iterable[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Notification:
        """Send a notification of `kind` (`POST /v1/notifications`); it as created, with one
        delivery per recipient and channel (`pending`, or `suppressed`).

        `recipients` are user ids, or mappings `{"address": ..., "channel": ...}`;
        `channels` (for user recipients) leaves the choice to their preferences when left
        out. `idempotency_key` makes a repeated call return the first notification; without
        one the client makes a key of its own, so its own retries cannot notify twice.
        Raises `InvalidRequestError` (422) naming each bad field, `ForbiddenError` (403) for
        a recipient the caller may not notify.
        """
        request = protocol.notify(
            kind, recipients, context=context, channels=channels,
            idempotency_key=idempotency_key or protocol.new_idempotency_key(),
        )  # fmt: skip
        return protocol.read_notification(self._send(request))

    def get_notification(self, notification: NotificationRef) -> Notification:
        """The notification and each delivery's status (`NotFoundError` if there is none, or
        it is another member's)."""
        return protocol.read_notification(self._send(protocol.get_notification(notification)))

    def deliveries(
        self,
        *,
        notification: NotificationRef | None = None,
        status: str | Iterable[str] | None = None,
        channel: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[Delivery]:
        """Every delivery that matches, newest first, page after page (`status="failed"`:
        the dead letters)."""
        cursor: str | None = None
        while True:
            page = self.deliveries_page(
                notification=notification, status=status, channel=channel, limit=limit,
                cursor=cursor,
            )  # fmt: skip
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def deliveries_page(
        self,
        *,
        notification: NotificationRef | None = None,
        status: str | Iterable[str] | None = None,
        channel: str | Iterable[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """One page of deliveries, newest first; pass its `next_cursor` as `cursor` (with the
        same filters) for the next page."""
        request = protocol.deliveries_page(
            notification=notification, status=status, channel=channel, limit=limit, cursor=cursor
        )
        return protocol.read_deliveries(self._send(request))

    def events(self, job: JobRef, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's events (status transitions and progress) from its history on, or after
        `last_event_id`, until its final status.

        A dropped or timed-out stream is reopened with `Last-Event-ID`, so no event is missed
        or given twice; `TransportError` once `retries` reconnections in a row failed.
        """
        stream = protocol.EventStream(job, last_event_id)
        failures = 0
        while not stream.done:
            got = 0
            try:
                response, connection = self._open_stream(stream.request())
                try:
                    while not stream.done:
                        line = response.readline()
                        if not line:
                            break
                        event = stream.feed(line)
                        if event is not None:
                            got += 1
                            failures = 0
                            yield event
                finally:
                    connection.close()
            except CONNECTION_ERRORS as exc:
                if got:
                    continue
                failures = self._pause(failures, exc)
                continue
            if stream.done:
                return
            if not got:  # a clean end with nothing new: a finished job with no more events?
                if self.get(job).finished:
                    return
                failures = self._pause(failures, None)

    def _pause(self, failures: int, exc: BaseException | None) -> int:
        delay = self.retry_policy.delay(failures)
        if delay is None:
            raise TransportError(f"the event stream failed {failures + 1} times: {exc!r}") from exc
        time.sleep(delay)
        return failures + 1

    # -- sending -------------------------------------------------------------------------

    def _send(self, request: Request) -> Response:
        """Send `request` and read the whole answer, retrying per the policy."""
        failures = 0
        retried = False
        while True:
            try:
                response = self._exchange(request)
            except CONNECTION_ERRORS as exc:
                delay = self.retry_policy.delay(failures)
                if delay is None:
                    raise TransportError(
                        f"{request.method} {request.path}: no answer after "
                        f"{failures + 1} attempts: {exc!r}"
                    ) from exc
            else:
                again, retry_after = protocol.should_retry(request, response)
                delay = self.retry_policy.delay(failures, retry_after) if again else None
                if delay is None:
                    return dataclasses.replace(response, retried=retried)
            failures += 1
            retried = True
            time.sleep(delay)

    def _exchange(self, request: Request) -> Response:
        connection, reused = self._connection()
        try:
            try:
                return self._roundtrip(connection, request)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
            # The server closed the kept-alive connection while it sat idle: a new one.
            connection.close()
            connection, _ = self._connection(fresh=True)
            return self._roundtrip(connection, request)
        except BaseException:
            connection.close()
            raise

    def _roundtrip(self, connection: http.client.HTTPConnection, request: Request) -> Response:
        self._connect(connection, self.timeout + request.hold)
        connection.request(
            request.method,
            request.target(self.base_path),
            body=request.body,
            headers=self._headers(request),
        )
        answer = connection.getresponse()
        body = answer.read()
        response = Response(
            answer.status,
            {name.lower(): value for name, value in answer.getheaders()},
            body,
            answer.reason,
        )
        if answer.will_close:
            connection.close()
        else:
            self._release(connection)
        return response

    def _open_stream(
        self, request: Request
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        """An event stream's answer, on a connection of its own; an error answer raised (after
        the retries an answer like 503 or 429 calls for)."""
        failures = 0
        while True:
            connection = self._new_connection()
            try:
                self._connect(connection, self.stream_idle_seconds)
                connection.request(
                    "GET", request.target(self.base_path), headers=self._headers(request)
                )
                answer = connection.getresponse()
                if answer.status == 200:
                    return answer, connection
                response = Response(
                    answer.status,
                    {name.lower(): value for name, value in answer.getheaders()},
                    answer.read(),
                    answer.reason,
                )
            except BaseException:
                connection.close()
                raise
            connection.close()
            again, retry_after = protocol.should_retry(request, response)
            delay = self.retry_policy.delay(failures, retry_after) if again else None
            if delay is None:
                raise response.error()
            failures += 1
            time.sleep(delay)

    def _headers(self, request: Request) -> dict[str, str]:
        return protocol.headers(self._token, {**self._extra_headers, **request.headers})

    def _connection(self, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            if self._idle and not fresh:
                return self._idle.pop(), True
        return self._new_connection(), False

    def _new_connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _connect(self, connection: http.client.HTTPConnection, read_timeout: float) -> None:
        """Connect within `timeout` if not connected; reads may then take `read_timeout`."""
        if connection.sock is None:
            connection.connect()  # within `timeout`; http.client sets TCP_NODELAY
        connection.sock.settimeout(read_timeout)

    def _release(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < POOL_SIZE:
                self._idle.append(connection)
                return
        connection.close()
