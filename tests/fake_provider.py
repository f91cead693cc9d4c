"""A fake HTTP provider (an SMS or push API, or a webhook receiver) on 127.0.0.1, in a thread
of its own, for the notification tests.

It answers as it is told, one planned answer per request in order and then its default
(200 with `{"id": "msg-<n>"}`): any status, `Retry-After`, a redirect, or no answer at all
(it hangs until released or stopped). It records every request (method, path, headers, body)
before answering, so a test counts what was received, hangs included.

    with fake_provider() as provider:
        provider.plan(Answer(429, retry_after="30"), 500)
        ...  # send three times: 429, 500, then 200
        assert provider.count() == 3

Its address is loopback: the client that reaches it must allow it (`CONVEYOR_OUTBOUND_ALLOW_HOSTS
=127.0.0.1`, or `EgressPolicy.parse(["127.0.0.1"])`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

#: The longest a hanging answer waits when nobody releases it.
HANG_SECONDS = 60.0


@dataclass(frozen=True)
class Answer:
    """How the fake provider answers one request."""

    status: int = 200
    json: Any = None  #: the body; None: `{"id": "msg-<n>"}` for a 2xx, `{"error": ...}` else
    retry_after: str | None = None
    location: str | None = None  #: a `Location` header (for a redirect)
    hang: bool = False  #: answer nothing until `release()` or the server stops
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    """One request the fake provider received."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeProvider:
    """The server; `url(path)` addresses it. Thread-safe: tests read it from their thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.received: list[Received] = []
        self.default = Answer()
        self._planned: deque[Answer] = deque()
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-provider")
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    # --- telling it what to answer ----------------------------------------------------------

    def plan(self, *answers: Answer | int) -> None:
        """Answer the next requests with these, in order (an int is a status)."""
        with self._changed:
            self._planned.extend(a if isinstance(a, Answer) else Answer(a) for a in answers)

    def always(self, answer: Answer | int) -> None:
        """Answer every request that no planned answer is left for with this."""
        self.default = answer if isinstance(answer, Answer) else Answer(answer)

    def release(self) -> None:
        """Let every hanging request end (with an empty 200)."""
        self._loop.call_soon_threadsafe(self._set_release)

    # --- what it received -------------------------------------------------------------------

    def count(self) -> int:
        with self._changed:
            return len(self.received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The requests received, once there are at least `count`; AssertionError after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the fake provider received {len(self.received)} requests, not {count}"
                    )
                self._changed.wait(left)
            return list(self.received)

    # --- running ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        assert self._runner is not None
        self._set_release()
        await self._runner.cleanup()

    def _set_release(self) -> None:
        assert self._release is not None
        self._release.set()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._changed:
            self.received.append(
                Received(
                    request.method,
                    request.path,
                    dict(request.query),
                    CIMultiDict(request.headers),
                    body,
                )
            )
            number = len(self.received)
            answer = self._planned.popleft() if self._planned else self.default
            self._changed.notify_all()
        if answer.hang:
            assert self._release is not None
            try:
                await asyncio.wait_for(self._release.wait(), HANG_SECONDS)
            except TimeoutError:
                pass
            return web.Response(text="")
        headers = dict(answer.headers)
        if answer.retry_after is not None:
            headers["Retry-After"] = answer.retry_after
        if answer.location is not None:
            headers["Location"] = answer.location
        payload = answer.json
        if payload is None:
            ok = 200 <= answer.status < 300
            payload = {"id": f"msg-{number}"} if ok else {"error": f"status {answer.status}"}
        return web.json_response(payload, status=answer.status, headers=headers)


@contextmanager
def fake_provider(host: str = "127.0.0.1") -> Iterator[FakeProvider]:
    provider = FakeProvider(host)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()
