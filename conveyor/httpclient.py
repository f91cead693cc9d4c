"""The shared outbound HTTP client of a process (`ctx.http`): one aiohttp session on the
process's job loop, one connection pool, timeouts, a response size limit, and no connection
to an address that is not public unless the allow list permits it (`conveyor.egress`)."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from conveyor import __version__
from conveyor.aio import LoopThread
from conveyor.egress import SCHEMES, EgressPolicy, parse_address
from conveyor.errors import DestinationRefusedError, OutboundHttpError
from conveyor.outbound import HttpResponse

USER_AGENT = f"conveyor/{__version__}"
READ_CHUNK = 64 * 1024


class SharedHttpClient:
    """An `HttpClient`: one aiohttp session on the process's job loop, made on first use.

    Every request has a total and a connect timeout, and a response body larger than
    `max_response_bytes` is an error rather than a memory spike. Network failures raise
    `OutboundHttpError` (a `TransientError`: the job is retried).

    Every connection goes through `egress` (by default: public addresses only). A host name
    is checked on the addresses it resolved to, which are the ones connected to (see
    `GuardedResolver`); an address in the URL, which aiohttp connects to without resolving,
    is checked before each request, redirects included. A refused destination raises
    `DestinationRefusedError` (permanent: the job is not retried).
    """

    def __init__(
        self,
        loop: LoopThread,
        *,
        timeout_seconds: float = 30.0,
        connect_timeout_seconds: float = 10.0,
        max_response_bytes: int = 10 * 1024 * 1024,
        max_connections: int = 100,
        egress: EgressPolicy | None = None,
    ) -> None:
        self._loop = loop
        self.egress = egress if egress is not None else EgressPolicy()
        self.timeout = aiohttp.ClientTimeout(
            total=timeout_seconds, sock_connect=connect_timeout_seconds
        )
        self.max_response_bytes = max_response_bytes
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def request(self, method: str, url: str, **options: Any) -> HttpResponse:
        """Send a request and wait for the whole response (from a worker thread); the options
        are those of `HttpClient.request`."""
        if self._loop.in_loop:
            raise RuntimeError("in an async job, use `await ctx.http.arequest(...)`")
        return self._loop.run(self._send(method, url, **options))

    async def arequest(self, method: str, url: str, **options: Any) -> HttpResponse:
        """Send a request and read the whole response (from any event loop)."""
        return await self._loop.run_here(self._send(method, url, **options))

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | str | None = None,
        timeout_seconds: float | None = None,
        follow_redirects: bool = True,
        read_at_most: int | None = None,
    ) -> HttpResponse:
        self._check_url(url)
        session = self._ensure_session()
        limits = self.timeout
        if timeout_seconds is not None:
            connect = min(timeout_seconds, self.timeout.sock_connect or timeout_seconds)
            limits = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=connect)
        try:
            async with session.request(
                method,
                url,
                params=params,
                headers=headers,
                json=json,
                data=data,
                timeout=limits,
                allow_redirects=follow_redirects,
            ) as response:
                body = await self._read(response, read_at_most)
                return HttpResponse(
                    response.status,
                    str(response.url),
                    CIMultiDictProxy(CIMultiDict(response.headers)),
                    body,
                )
        except aiohttp.InvalidURL as exc:  # a redirect's Location, a legacy IPv4 form (127.1)
            raise DestinationRefusedError(f"{method} {url}: not a valid URL: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            reason = str(exc) or type(exc).__name__
            raise OutboundHttpError(f"{method} {url} failed: {reason}") from exc

    async def _read(self, response: aiohttp.ClientResponse, at_most: int | None) -> bytes:
        if at_most is not None:  # the first bytes only: the rest is not read (nor an error)
            kept = bytearray()
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                kept += chunk[: at_most - len(kept)]
                if len(kept) >= at_most:
                    response.close()
                    break
            return bytes(kept)
        declared = response.content_length
        if declared is not None and declared > self.max_response_bytes:
            raise OutboundHttpError(
                f"the response of {response.url} is {declared} bytes; "
                f"the limit is {self.max_response_bytes}"
            )
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(READ_CHUNK):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise OutboundHttpError(
                    f"the response of {response.url} exceeds {self.max_response_bytes} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_url(self, url: str) -> None:
        try:
            parsed = URL(url)
        except (TypeError, ValueError) as exc:
            raise DestinationRefusedError(f"not a valid URL: {url!r}") from exc
        if parsed.scheme.lower() not in SCHEMES:
            raise DestinationRefusedError(f"refused {url!r}: only http and https URLs are reached")

    async def _refuse_addresses(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """A client middleware (it sees every hop of a redirect): aiohttp connects to an
        address in the URL without asking the resolver, so it is checked here."""
        host = request.url.raw_host or ""
        if parse_address(host) is not None:
            self.egress.check(host, [host])
        return await handler(request)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                headers={"User-Agent": USER_AGENT},
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, resolver=GuardedResolver(self.egress)
                ),
                raise_for_status=False,
                middlewares=(self._refuse_addresses,),
            )
        return self._session

    def close(self) -> None:
        """Close the session and its connections (from any thread but the loop's)."""
        if self._session is not None and not self._loop.loop.is_closed():
            session, self._session = self._session, None
            self._loop.run(session.close())


class GuardedResolver(AbstractResolver):
    """Resolves host names as aiohttp would, and refuses a name any of whose addresses the
    policy refuses. aiohttp connects to exactly the addresses returned here (and caches them
    per name), so the address checked is the address used: no second lookup to rebind."""

    def __init__(self, egress: EgressPolicy, resolver: AbstractResolver | None = None) -> None:
        self.egress = egress
        self._resolver = resolver if resolver is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        self.egress.check(host, [result["host"] for result in results])
        return results

    async def close(self) -> None:
        await self._resolver.close()
