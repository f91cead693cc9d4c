"""`AsyncClient`: the asyncio Python client of the HTTP API, on aiohttp."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp

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

CONNECTION_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class AsyncClient:
    """An asyncio client of Conveyor's HTTP API: `Client`'s operations as coroutines (and
    async iterators for `list` and `events`), with the same retries and timeouts.

    Use it as ``async with AsyncClient(url, token) as client:``, or call `aclose()`; it
    opens its aiohttp session on the first request, on the running event loop.
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
        _, _, _, self.base_path = protocol.split_base_url(base_url)
        self._origin = protocol.origin(base_url)
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries, backoff, max_backoff)
        self.long_poll_seconds = LONG_POLL_SECONDS
        self.stream_idle_seconds = STREAM_IDLE_SECONDS
        self._token = token
        self._extra_headers = dict(headers or {})
        self._ssl = ssl_context
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; the client cannot be used afterwards."""
        self._closed = True
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the operations --------------------------------------------------------------------

    async def submit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        wait: float | None = None,
        idempotency_key: str | None = None,
        delay_seconds: float | None = None,
        run_at: dt.datetime | str | None = None,
    ) -> Job:
        """Submit a job; see `Client.submit`."""
        key = idempotency_key or protocol.new_idempotency_key()
        request = protocol.submit(
            type, payload, idempotency_key=key, wait=wait, delay_seconds=delay_seconds,
            run_at=run_at,
        )  # fmt: skip
        return protocol.read_job(await self._send(request))

    async def get(self, job: JobRef) -> Job:
        """The job (`NotFoundError` if there is none, or it is another member's)."""
        return protocol.read_job(await self._send(protocol.get(job)))

    async def wait(self, job: JobRef, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """The job once it has finished; see `Client.wait`. (`timeout` rather than
        `asyncio.timeout()`: it also bounds the server's long-poll, and the error it ends in
        carries the job as last seen.)"""
        deadline = None if timeout is None else time.monotonic() + timeout
        hold = self.long_poll_seconds
        while True:
            seconds = hold
            if deadline is not None:
                seconds = min(hold, max(deadline - time.monotonic(), 0.0))
            request = protocol.get(job, wait=seconds, until="finished")
            try:
                current = protocol.read_job(await self._send(request))
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

    async def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        type: str | Iterable[str] | None = None,
        parent: JobRef | None = None,
        include: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Job]:
        """Every job that matches, newest first, page after page: ``async for job in
        client.list(status="failed")``; see `Client.list`."""
        cursor: str | None = None
        while True:
            page = await self.list_page(
                status=status, type=type, parent=parent, include=include, limit=limit,
                cursor=cursor,
            )  # fmt: skip
            for job in page.items:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def list_page(
        self,
        *,
        status: str | Iterable[str] | None = None,
        type: str | Iterable[str] | None = None,
        parent: JobRef | None = None,
        include: str | Iterable[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """One page of jobs; see `Client.list_page`."""
        request = protocol.list_page(
            status=status, type=type, parent=parent, include=include, limit=limit, cursor=cursor
        )
        return protocol.read_page(await self._send(request))

    async def cancel(self, job: JobRef) -> Job:
        """Cancel the job; see `Client.cancel`."""
        return protocol.read_job(await self._send(protocol.cancel(job)))

    async def retry(self, job: JobRef) -> Job:
        """Run a failed or cancelled job again; see `Client.retry`."""
        response = await self._send(protocol.retry(job))
        if protocol.is_retry_replayed(response):
            current = await self.get(job)
            if current.status not in protocol.RETRYABLE:
                return current
        return protocol.read_job(response)

    async def job_types(self) -> tuple[JobType, ...]:
        """Every job type the server runs."""
        return protocol.read_job_types(await self._send(protocol.job_types()))

    # -- notifications -----------------------------------------------------------------------

    async def notify(
        self,
        kind: str,
        recipients: Iterable[Recipient],
        *,
        context: Mapping[str, Any] | None = None,
        channels: Iterable[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Notification:
        """Send a notification of `kind`; see `Client.notify`."""
        request = protocol.notify(
            kind, recipients, context=context, channels=channels,
            idempotency_key=idempotency_key or protocol.new_idempotency_key(),
        )  # fmt: skip
        return protocol.read_notification(await self._send(request))

    async def get_notification(self, notification: NotificationRef) -> Notification:
        """The notification and its deliveries; see `Client.get_notification`."""
        request = protocol.get_notification(notification)
        return protocol.read_notification(await self._send(request))

    async def deliveries(
        self,
        *,
        notification: NotificationRef | None = None,
        status: str | Iterable[str] | None = None,
        channel: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Delivery]:
        """Every delivery that matches, newest first, page after page: ``async for d in
        client.deliveries(status="failed")``; see `Client.deliveries`."""
        cursor: str | None = None
        while True:
            page = await self.deliveries_page(
                notification=notification, status=status, channel=channel, limit=limit,
                cursor=cursor,
            )  # fmt: skip
            for delivery in page.items:
                yield delivery
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def deliveries_page(
        self,
        *,
        notification: NotificationRef | None = None,
        status: str | Iterable[str] | None = None,
        channel: str | Iterable[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """One page of deliveries; see `Client.deliveries_page`."""
        request = protocol.deliveries_page(
            notification=notification, status=status, channel=channel, limit=limit, cursor=cursor
        )
        return protocol.read_deliveries(await self._send(request))

    async def events(self, job: JobRef, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """The job's events until its final status, reconnecting with `Last-Event-ID`; see
        `Client.events`. To stop early and close the connection at once, iterate inside
        ``async with contextlib.aclosing(client.events(job)) as events:``."""
        stream = protocol.EventStream(job, last_event_id)
        failures = 0
        while not stream.done:
            got = 0
            try:
                async with self._open_stream(stream.request()) as answer:
                    while not stream.done:
                        line = await answer.content.readline()
                        if not line:
                            break
                        event = stream.feed(line)
                        if event is not None:
                            got += 1
                            failures = 0
                            yield event
            except CONNECTION_ERRORS as exc:
                if got:
                    continue
                failures = await self._pause(failures, exc)
                continue
            if stream.done:
                return
            if not got:  # a clean end with nothing new: a finished job with no more events?
                if (await self.get(job)).finished:
                    return
                failures = await self._pause(failures, None)

    async def _pause(self, failures: int, exc: BaseException | None) -> int:
        delay = self.retry_policy.delay(failures)
        if delay is None:
            raise TransportError(f"the event stream failed {failures + 1} times: {exc!r}") from exc
        await asyncio.sleep(delay)
        return failures + 1

    # -- sending -------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True),
                auto_decompress=True,
            )
        return self._http

    def _url(self, request: Request) -> str:
        return self._origin + request.target(self.base_path)

    def _headers(self, request: Request) -> dict[str, str]:
        return protocol.headers(self._token, {**self._extra_headers, **request.headers})

    async def _send(self, request: Request) -> Response:
        """Send `request` and read the whole answer, retrying per the policy."""
        failures = 0
        retried = False
        while True:
            try:
                response = await self._exchange(request)
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
            await asyncio.sleep(delay)

    async def _exchange(self, request: Request) -> Response:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout, sock_read=self.timeout + request.hold
        )
        async with self._session().request(
            request.method,
            self._url(request),
            data=request.body,
            headers=self._headers(request),
            timeout=timeout,
            allow_redirects=False,
        ) as answer:
            return Response(
                answer.status,
                _lower(answer.headers),
                await answer.read(),
                answer.reason or "",
            )

    def _open_stream(self, request: Request) -> _Stream:
        return _Stream(self, request)


class _Stream:
    """`async with`: an event stream's 200 answer, open; an error answer raised (after the
    retries an answer like 503 or 429 calls for)."""

    def __init__(self, client: AsyncClient, request: Request) -> None:
        self.client = client
        self.request = request
        self.answer: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        client = self.client
        timeout = aiohttp.ClientTimeout(
            total=None, connect=client.timeout, sock_read=client.stream_idle_seconds
        )
        failures = 0
        while True:
            answer = await client._session().get(
                client._url(self.request),
                headers=client._headers(self.request),
                timeout=timeout,
                allow_redirects=False,
            )
            if answer.status == 200:
                self.answer = answer
                return answer
            try:
                response = Response(
                    answer.status, _lower(answer.headers), await answer.read(), answer.reason or ""
                )
            finally:
                answer.release()
            again, retry_after = protocol.should_retry(self.request, response)
            delay = client.retry_policy.delay(failures, retry_after) if again else None
            if delay is None:
                raise response.error()
            failures += 1
            await asyncio.sleep(delay)

    async def __aexit__(self, *exc_info: object) -> None:
        if self.answer is not None:
            self.answer.close()  # not back to the pool: the stream may not be read to the end


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out
