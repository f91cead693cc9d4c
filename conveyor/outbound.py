"""What a job sees of outbound HTTP (`ctx.http`): the client's interface and its responses.

`ctx.http.request(...)` from a plain job, `await ctx.http.arequest(...)` from an `async def`
job. The implementation (`conveyor.httpclient`) is built by the composition root.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from multidict import CIMultiDictProxy


@dataclass(frozen=True)
class HttpResponse:
    """A whole response, read into memory (within the client's size limit)."""

    status: int
    url: str
    headers: CIMultiDictProxy[str] = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def ok(self) -> bool:
        """True for 1xx, 2xx and 3xx answers."""
        return self.status < 400

    def text(self, encoding: str = "utf-8") -> str:
        return self.body.decode(encoding, errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def retry_after(self) -> float | None:
        """Seconds the server asked to wait (`Retry-After`, as seconds or an HTTP date)."""
        value = self.headers.get("Retry-After", "").strip()
        if not value:
            return None
        if value.isascii() and value.isdigit():
            return float(value)  # as sent; RetryLater and max_backoff cap what is used
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - time.time(), 0.0)


class HttpClient(Protocol):
    """The process's shared outbound HTTP client.

    Every request has a total and a connect timeout and a cap on the response's size;
    a request that gets no answer raises `OutboundHttpError` (a `TransientError`: the job is
    retried). Any status is an answer: check `response.ok` or `response.status`.

    Only public addresses are reached, unless `CONVEYOR_OUTBOUND_ALLOW_HOSTS` permits an
    internal host: a request to any other raises `DestinationRefusedError` (permanent).
    Redirects are followed (through the same check) unless `follow_redirects=False`, which
    returns the 3xx answer itself. `read_at_most=n` keeps the first `n` bytes of the body
    and reads no more (instead of the size cap's error), for a caller that only looks at a
    little of the answer.
    """

    def request(
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
        """Send a request and wait for the whole response (from a plain job's thread)."""

    async def arequest(
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
        """Send a request and read the whole response (from an `async def` job)."""
