"""A small aiohttp server on 127.0.0.1 in a thread of its own: the far end of `ctx.http`.

Routes: `/echo` (the request as JSON), `/bytes?size=N` (N bytes, with Content-Length),
`/stream?size=N` (N bytes, chunked, no Content-Length), `/slow?seconds=S` (answers after S
seconds, or when the server stops), `/status?code=C&retry_after=V`, `/redirect?to=URL` (a 302
there). It records the peer of
every request, so a test can tell how many connections a client opened.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

CHUNK = 16 * 1024


class LocalHttpServer:
    """An aiohttp app served on its own event loop thread; `url(path)` addresses it."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-http")
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.middlewares.append(self._record_peer)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_get("/bytes", self._bytes)
        app.router.add_get("/stream", self._stream)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/status", self._status)
        app.router.add_get("/redirect", self._redirect)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()
        await self._runner.cleanup()

    @web.middleware
    async def _record_peer(self, request: web.Request, handler: web.Handler) -> web.StreamResponse:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else None
        if peer:
            self.peers.append((peer[0], peer[1]))
        return await handler(request)

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "query": dict(request.query),
                "user_agent": request.headers.get("User-Agent"),
                "header": request.headers.get("X-Test"),
                "body": body.decode(),
            }
        )

    async def _bytes(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.query["size"]))

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        while size > 0:
            part = min(size, CHUNK)
            await response.write(b"y" * part)
            size -= part
        await response.write_eof()
        return response

    async def _slow(self, request: web.Request) -> web.Response:
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), float(request.query["seconds"]))
        except TimeoutError:
            pass
        return web.Response(text="late")

    async def _status(self, request: web.Request) -> web.Response:
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=int(request.query["code"]), headers=headers, text="status")

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])


@contextmanager
def local_http_server() -> Iterator[LocalHttpServer]:
    server = LocalHttpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
