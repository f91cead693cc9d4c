"""Announcements: wake-ups for clients waiting on a job, over Redis pub/sub or in-process.

Whoever commits a transition `announce`s it; the web process `listen`s per job while a request
waits (`?wait=`, `Prefer: wait`, server-sent events). An announcement carries no state the
answer relies on: the listener reads the row again. (A job's history is the `job_events`
table; these are only wake-ups.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from queue import Empty, SimpleQueue
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: A status of "" means "something may have changed: read the job again".
UNKNOWN = ""
PAUSE_AFTER_FAILURE = 2.0
MAX_PENDING = 100_000
POLL_SECONDS = 1.0


@contextlib.asynccontextmanager
async def _ticking(queue: asyncio.Queue[str]) -> AsyncIterator[None]:
    """Feed `UNKNOWN` into the queue every second (when no change notices can arrive)."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            queue.put_nowait(UNKNOWN)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()


class Announcer(Protocol):
    """What the services need: a way to say that a job changed."""

    def announce(self, job_id: uuid.UUID, status: str) -> None:
        """Announce that the job changed (from any thread; never blocks)."""


class Announcements(Announcer, Protocol):
    """Announcing and listening (the web process)."""

    def listen(
        self, job_id: uuid.UUID
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[str]]:
        """Statuses of the job, as they are announced, while the context is open
        (`UNKNOWN` when the status must be read again)."""

    def ping(self) -> None:
        """Raise unless the channel answers (the readiness probe)."""

    def close(self) -> None:
        """Send what is still queued and release the connections (any thread)."""

    async def stop_listening(self) -> None:
        """End the listening side, on the loop that listened (the web app's shutdown)."""


class _Subscribers:
    """Local queues per job, fed from whatever thread learns of a change."""

    def __init__(self) -> None:
        self._queues: dict[uuid.UUID, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]]]
        self._queues = defaultdict(set)
        self._lock = threading.Lock()

    def add(self, job_id: uuid.UUID, queue: asyncio.Queue[str]) -> bool:
        """Register; True if it is the first subscriber of this job."""
        with self._lock:
            first = job_id not in self._queues
            self._queues[job_id].add((asyncio.get_running_loop(), queue))
            return first

    def remove(self, job_id: uuid.UUID, queue: asyncio.Queue[str]) -> bool:
        """Unregister; True if it was the last subscriber of this job."""
        with self._lock:
            entries = self._queues.get(job_id, set())
            entries.discard((asyncio.get_running_loop(), queue))
            if not entries:
                self._queues.pop(job_id, None)
                return True
            return False

    def deliver(self, job_id: uuid.UUID, status: str) -> None:
        with self._lock:
            targets = list(self._queues.get(job_id, ()))
        for loop, queue in targets:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(queue.put_nowait, status)


class MemoryAnnouncements:
    """Announcements within one process (the embedded mode, and tests)."""

    def __init__(self) -> None:
        self._subscribers = _Subscribers()

    def announce(self, job_id: uuid.UUID, status: str) -> None:
        self._subscribers.deliver(job_id, status)

    @contextlib.asynccontextmanager
    async def listen(self, job_id: uuid.UUID) -> AsyncIterator[asyncio.Queue[str]]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers.add(job_id, queue)
        try:
            yield queue
        finally:
            self._subscribers.remove(job_id, queue)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def stop_listening(self) -> None:
        return None


class RedisAnnouncements:
    """Announcements over Redis pub/sub, one channel per job (`<prefix>:job:<id>`).

    `announce` never blocks: a background thread sends what accumulated in one pipeline, so
    announcing costs a worker thread next to nothing and Redis one round trip per batch. The
    web process holds one subscriber connection and subscribes to a job's channel only while
    someone waits on it.
    """

    def __init__(self, url: str, prefix: str = "conveyor") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self._client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self._paused_until = 0.0  # after a failed send, skip announcing for a moment
        self._announcements: SimpleQueue[tuple[str, str] | None] = SimpleQueue()
        self._announcer: threading.Thread | None = None
        self._announcer_lock = threading.Lock()
        self._subscribers = _Subscribers()
        self._pubsub: Any = None
        self._aclient: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._start_lock: asyncio.Lock | None = None
        self._wake = asyncio.Event()

    def channel(self, job_id: uuid.UUID) -> str:
        return f"{self.prefix}:job:{job_id}"

    def announce(self, job_id: uuid.UUID, status: str) -> None:
        if self._announcer is None:
            with self._announcer_lock:
                if self._announcer is None:
                    self._announcer = threading.Thread(
                        target=self._announce, name="conveyor-announce", daemon=True
                    )
                    self._announcer.start()
        if self._announcements.qsize() < MAX_PENDING:  # else waiters re-read at their deadline
            self._announcements.put_nowait((self.channel(job_id), json.dumps({"status": status})))

    def _announce(self) -> None:
        while True:
            item = self._announcements.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 1000:
                try:
                    item = self._announcements.get_nowait()
                except Empty:
                    break
                if item is None:
                    self._send(batch)
                    return
                batch.append(item)
            self._send(batch)

    def _send(self, batch: list[tuple[str, str]]) -> None:
        if time.monotonic() < self._paused_until:
            return  # Redis failed a moment ago: drop (the row is the truth)
        try:
            pipe = self._client.pipeline(transaction=False)
            for channel, data in batch:
                pipe.publish(channel, data)
            pipe.execute()
        except Exception as exc:  # waiters re-read the row; the row is the truth
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            logger.warning(
                "could not announce %d change(s) (Redis unreachable?): %r", len(batch), exc
            )

    def close_announcer(self) -> None:
        """Send what is queued, then stop the announcing thread."""
        if self._announcer is not None:
            self._announcements.put(None)
            self._announcer.join(timeout=5)
            self._announcer = None

    async def _ensure_reader(self) -> Any:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._pubsub is None:
                import redis.asyncio as aioredis

                # (typed Any: the redis stubs predate pubsub.connect and aclose)
                client: Any = aioredis.Redis.from_url(self.url, socket_connect_timeout=2)
                pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.connect()
                except BaseException:
                    await pubsub.aclose()
                    await client.aclose()
                    raise
                self._pubsub, self._aclient = pubsub, client
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read())
        return self._pubsub

    async def _read(self) -> None:
        prefix = f"{self.prefix}:job:"
        while True:
            try:
                if not self._pubsub.subscribed:
                    self._wake.clear()
                    await self._wake.wait()  # until someone subscribes
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("announcement subscription failed, reconnecting: %r", exc)
                await asyncio.sleep(1.0)
                continue
            if message and message["type"] == "message":
                channel = message["channel"].decode()
                with contextlib.suppress(ValueError, KeyError):
                    job_id = uuid.UUID(channel.removeprefix(prefix))
                    self._subscribers.deliver(job_id, json.loads(message["data"])["status"])

    @contextlib.asynccontextmanager
    async def listen(self, job_id: uuid.UUID) -> AsyncIterator[asyncio.Queue[str]]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        try:
            pubsub = await self._ensure_reader()
            if self._subscribers.add(job_id, queue):
                await pubsub.subscribe(self.channel(job_id))
                self._wake.set()
        except Exception as exc:
            self._subscribers.remove(job_id, queue)
            logger.warning("Redis unreachable (%r); waiters re-read jobs every second", exc)
            async with _ticking(queue):
                yield queue
            return
        try:
            yield queue
        finally:
            if self._subscribers.remove(job_id, queue):
                with contextlib.suppress(Exception):
                    await pubsub.unsubscribe(self.channel(job_id))

    def ping(self) -> None:
        self._client.ping()

    def close(self) -> None:
        self.close_announcer()
        self._client.close()

    async def stop_listening(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            await pubsub.aclose()
            await self._aclient.aclose()
