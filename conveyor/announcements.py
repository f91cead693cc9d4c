"""Announcements: wake-ups for clients waiting on a job, over Redis pub/sub or in-process.

Whoever commits a transition `announce`s it; the web process `listen`s per job while requests
wait on it (`?wait=`, `Prefer: wait`, server-sent events: see `conveyor.feeds`). An
announcement carries no state the answer relies on: the listener reads the row again. (A job's
history is the `job_events` table; these are only wake-ups.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from queue import Empty, SimpleQueue
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: A status of "" means "something may have changed: read the job again".
UNKNOWN = ""
PAUSE_AFTER_FAILURE = 2.0
MAX_PENDING = 100_000
#: While the channel is down, listeners are told to read their job again this often.
POLL_SECONDS = 1.0
#: A subscriber connection nobody has listened on for this long is closed.
IDLE_SECONDS = 30.0


class Notices:
    """The statuses announced for one job since its listener last looked.

    A set, not a queue: however many announcements arrive while the listener is busy (a job
    reporting progress fifty times a second), it holds at most one entry per status.
    """

    def __init__(self) -> None:
        self._statuses: set[str] = set()
        self._arrived = asyncio.Event()

    def put(self, status: str) -> None:
        """Add a status (on the listener's loop)."""
        self._statuses.add(status)
        self._arrived.set()

    async def take(self) -> set[str]:
        """Everything announced since the last take; waits until there is something."""
        await self._arrived.wait()
        self._arrived.clear()
        statuses, self._statuses = self._statuses, set()
        return statuses


class Announcer(Protocol):
    """What the services need: a way to say that a job changed."""

    def announce(self, job_id: uuid.UUID, status: str) -> None:
        """Announce that the job changed (from any thread; never blocks)."""


class Announcements(Announcer, Protocol):
    """Announcing and listening (the web process)."""

    def listen(self, job_id: uuid.UUID) -> contextlib.AbstractAsyncContextManager[Notices]:
        """Statuses of the job, as they are announced, while the context is open (`UNKNOWN`
        when the job must be read again: while the channel is down, every `POLL_SECONDS`, and
        once when it is back). Never fails: a channel that is down is waited out."""

    @property
    def listening(self) -> int:
        """How many jobs this process listens on."""

    def ping(self) -> None:
        """Raise unless the channel answers (the readiness probe)."""

    def close(self) -> None:
        """Send what is still queued and release the connections (any thread)."""

    async def stop_listening(self) -> None:
        """End the listening side, on the loop that listened (the web app's shutdown)."""


class _Subscribers:
    """Local listeners per job, fed from whatever thread learns of a change."""

    def __init__(self) -> None:
        self._notices: dict[uuid.UUID, set[tuple[asyncio.AbstractEventLoop, Notices]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._notices)

    def add(self, job_id: uuid.UUID, notices: Notices) -> bool:
        """Register; True if it is the first listener of this job."""
        with self._lock:
            entries = self._notices.setdefault(job_id, set())
            entries.add((asyncio.get_running_loop(), notices))
            return len(entries) == 1

    def remove(self, job_id: uuid.UUID, notices: Notices) -> bool:
        """Unregister; True if it was the last listener of this job."""
        with self._lock:
            entries = self._notices.get(job_id, set())
            entries.discard((asyncio.get_running_loop(), notices))
            if not entries:
                self._notices.pop(job_id, None)
                return True
            return False

    def jobs(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._notices)

    def deliver(self, job_id: uuid.UUID, status: str) -> None:
        with self._lock:
            targets = list(self._notices.get(job_id, ()))
        for loop, notices in targets:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(notices.put, status)

    def deliver_to_all(self, status: str) -> None:
        with self._lock:
            targets = [target for entries in self._notices.values() for target in entries]
        for loop, notices in targets:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(notices.put, status)


class MemoryAnnouncements:
    """Announcements within one process (the embedded mode, and tests)."""

    def __init__(self) -> None:
        self._subscribers = _Subscribers()

    def announce(self, job_id: uuid.UUID, status: str) -> None:
        self._subscribers.deliver(job_id, status)

    @contextlib.asynccontextmanager
    async def listen(self, job_id: uuid.UUID) -> AsyncIterator[Notices]:
        notices = Notices()
        self._subscribers.add(job_id, notices)
        try:
            yield notices
        finally:
            self._subscribers.remove(job_id, notices)

    @property
    def listening(self) -> int:
        return len(self._subscribers)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def stop_listening(self) -> None:
        return None


class RedisAnnouncements:
    """Announcements over Redis pub/sub, one channel per job (`<prefix>:job:<id>`).

    `announce` never blocks: a background thread sends what accumulated in one pipeline, so
    announcing costs a worker thread next to nothing and Redis one round trip per batch.

    The web process holds one subscriber connection, read by one task, and subscribes to a
    job's channel only while someone listens on it. When that connection fails (Redis
    restarted, stopped, unreachable), the task tells every listener to read its job again
    every `POLL_SECONDS` and tries to connect again at the same pace; once connected, it
    subscribes to every channel listened on and tells every listener to read its job once
    more, since what was announced meanwhile is lost.
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
        self._pubsub: Any = None  # the subscriber connection, while it is up
        self._reader: asyncio.Task[None] | None = None
        self._arrived: asyncio.Event | None = None  # a listener arrived (wakes an idle reader)
        self._stale = False  # a (un)subscribe failed on the live connection: make a new one
        self._down_since: float | None = None

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

    # --- the listening side (the web process's event loop) --------------------------------

    @contextlib.asynccontextmanager
    async def listen(self, job_id: uuid.UUID) -> AsyncIterator[Notices]:
        notices = Notices()
        first = self._subscribers.add(job_id, notices)
        self._start_reader()
        pubsub = self._pubsub
        if first and pubsub is not None:
            try:
                await pubsub.subscribe(self.channel(job_id))
            except Exception as exc:  # the reader reconnects and subscribes it with the rest
                logger.debug(
                    "could not subscribe to job %s: %r", job_id, exc, extra={"job_id": str(job_id)}
                )
                self._stale = True
        try:
            yield notices
        finally:
            if self._subscribers.remove(job_id, notices):
                pubsub = self._pubsub
                if pubsub is not None:
                    try:
                        await pubsub.unsubscribe(self.channel(job_id))
                    except Exception as exc:
                        logger.debug(
                            "could not unsubscribe from job %s: %r",
                            job_id,
                            exc,
                            extra={"job_id": str(job_id)},
                        )
                        self._stale = True

    @property
    def listening(self) -> int:
        return len(self._subscribers)

    def _start_reader(self) -> None:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.set()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="conveyor-announcements")

    async def _read(self) -> None:
        """Connect, subscribe to every job listened on and hand out what arrives, until the
        connection fails (listeners then read their jobs until it is back) or nobody has
        listened for `IDLE_SECONDS`."""
        while True:
            await self._until_someone_listens()
            try:
                pubsub = await self._connect()
            except Exception as exc:  # Redis unreachable: listeners poll until it is back
                self._lost(exc)
                await asyncio.sleep(POLL_SECONDS)
                continue
            try:
                self._found()
                await self._receive(pubsub)
            except Exception as exc:
                self._lost(exc)
            finally:
                self._pubsub = None
                await _discard(pubsub)

    async def _until_someone_listens(self) -> None:
        assert self._arrived is not None
        self._arrived.clear()
        if not len(self._subscribers):
            await self._arrived.wait()

    async def _connect(self) -> Any:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py: a reconnection it made on its own would hide the gap in
        # which announcements were lost. (Typed Any: the stubs predate pubsub.connect.)
        client: Any = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_keepalive=True, retry=Retry(NoBackoff(), 0)
        )
        pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.connect()
            self._pubsub, self._stale = pubsub, False
            # From here on, a new listener subscribes itself; these are the ones before it.
            channels = [self.channel(job_id) for job_id in self._subscribers.jobs()]
            if channels:
                await pubsub.subscribe(*channels)
        except BaseException:
            self._pubsub = None
            await _discard(pubsub)
            raise
        return pubsub

    async def _receive(self, pubsub: Any) -> None:
        prefix = f"{self.prefix}:job:"
        loop = asyncio.get_running_loop()
        idle_since: float | None = None
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if self._stale:
                raise ConnectionError("a subscription failed on this connection")
            if message and message["type"] == "message":
                channel = message["channel"].decode()
                with contextlib.suppress(ValueError, KeyError):
                    job_id = uuid.UUID(channel.removeprefix(prefix))
                    self._subscribers.deliver(job_id, json.loads(message["data"])["status"])
            if len(self._subscribers):
                idle_since = None
            elif idle_since is None:
                idle_since = loop.time()
            elif loop.time() - idle_since > IDLE_SECONDS:
                return

    def _lost(self, exc: Exception) -> None:
        """The channel is down: every listener reads its job again (now, and every
        `POLL_SECONDS` until it is back); one warning per outage."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(
                "announcement channel down (%r): requests waiting on jobs read them every %g s "
                "until Redis is back",
                exc,
                POLL_SECONDS,
            )
        self._subscribers.deliver_to_all(UNKNOWN)

    def _found(self) -> None:
        """Connected and subscribed: every listener reads its job once more (a change
        announced while no connection listened is lost)."""
        if self._down_since is not None:
            logger.info(
                "announcement channel back after %.1f s; listening on %d job(s) again",
                time.monotonic() - self._down_since,
                len(self._subscribers),
            )
            self._down_since = None
        self._subscribers.deliver_to_all(UNKNOWN)

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
        self._arrived = None


async def _discard(pubsub: Any) -> None:
    """Close a subscriber connection and its client, whatever state they are in."""
    with contextlib.suppress(Exception):
        await pubsub.aclose()
    with contextlib.suppress(Exception):
        await pubsub.connection_pool.disconnect()
