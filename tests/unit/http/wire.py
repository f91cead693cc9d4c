"""The embedded app served as `conveyor web` and `conveyor dev` serve it, on 127.0.0.1, and
a raw-socket client: for what happens on the wire before (and around) aiohttp's routing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from conveyor.announcements import MemoryAnnouncements
from conveyor.db import make_engine, make_sessionmaker
from conveyor.http.app import create_app
from conveyor.http.keys import METRICS
from conveyor.http.server import make_runner
from tests.stack import build_container, make_users, test_settings


@dataclass
class Served:
    """A running server: its port, its app and a member's token."""

    port: int
    app: web.Application
    token: str

    def sample(self, name: str, **labels: str) -> float:
        """A metric's current value (0 if it has no such sample yet)."""
        value = self.app[METRICS].registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def served_app(sqlite_url: str, **settings: Any) -> AsyncIterator[Served]:
    """The embedded app (SQLite, stub broker, no worker, no sweeper) behind `make_runner`."""
    config = test_settings(
        database_url=sqlite_url, broker_url="stub://", redis_url=None, **settings
    )
    engine = make_engine(sqlite_url, pool_size=5)
    container, _ = build_container(config, make_sessionmaker(engine), MemoryAnnouncements())
    try:
        _, member, _ = make_users(config, container.db)
        app = create_app(container, sweeper=False)
        runner = make_runner(app, config, shutdown_timeout=1)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            yield Served(runner.addresses[0][1], app, member)
        finally:
            await runner.cleanup()
    finally:
        container.close()
        engine.dispose()


@dataclass
class Answer:
    """What the server sent on one connection, and whether and when it closed it."""

    raw: bytes
    closed_after: float | None  #: seconds from connecting until the server closed, or None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    body: bytes = b""

    def __post_init__(self) -> None:
        head, _, self.body = self.raw.partition(b"\r\n\r\n")
        if head:
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """A raw TCP connection that records what arrives, and when the server closes it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.chunks: list[bytes] = []
        self.opened = asyncio.get_running_loop().time()
        self.closed_at: float | None = None
        self._reading = asyncio.create_task(self._read(reader))

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(65536):
                self.chunks.append(chunk)
        except ConnectionError:
            pass  # reset by the server after we wrote to a closed connection: closed too
        self.closed_at = asyncio.get_running_loop().time()

    @property
    def closed(self) -> bool:
        return self._reading.done()

    def send(self, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(data)

    async def wait_closed(self, within: float) -> bool:
        """Whether the server closed the connection within `within` seconds."""
        await asyncio.wait([self._reading], timeout=within)
        return self.closed

    async def trickle(self, data: bytes, *, every: float, at_most: float) -> None:
        """Send `data` a byte at a time, one every `every` seconds, until the server closes
        the connection or `at_most` seconds have passed (or the bytes run out)."""
        deadline = asyncio.get_running_loop().time() + at_most
        for byte in data:
            if self.closed or asyncio.get_running_loop().time() > deadline:
                return
            self.send(bytes([byte]))
            await asyncio.wait([self._reading], timeout=every)

    def answer(self) -> Answer:
        closed_after = None if self.closed_at is None else self.closed_at - self.opened
        return Answer(b"".join(self.chunks), closed_after)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading


async def exchange(port: int, data: bytes, within: float = 10.0) -> Answer:
    """Send `data` on a new connection and read until the server closes it."""
    connection = await Connection.open(port)
    try:
        connection.send(data)
        assert await connection.wait_closed(within), "the server did not close the connection"
        return connection.answer()
    finally:
        await connection.close()


def request(
    method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """The bytes of an HTTP/1.1 request that asks the server to close after answering."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
