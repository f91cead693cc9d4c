"""Builds the Dramatiq broker from settings, and publishes job messages through it."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Middleware

from conveyor.services.jobs import JobMessage

logger = logging.getLogger(__name__)

BLOCKED_TIMEOUT_SECONDS = 30
#: Confirmed ids kept for `take_confirmed`; past that, the sweeper publishes them again.
MAX_CONFIRMED = 100_000


def build_broker(url: str, *, namespace: str = "conveyor") -> dramatiq.Broker:
    """RabbitMQ (publisher confirms on), Redis or the in-process stub, by the URL's scheme.

    Dramatiq's own retry, time-limit and age-limit middleware are left out: the job row
    drives retries and limits (see `conveyor.workers.lifecycle`).
    """
    middleware: list[Middleware] = [CurrentMessage()]
    scheme = urlsplit(url).scheme
    if scheme in ("amqp", "amqps"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)
        for params in (
            broker.parameters if isinstance(broker.parameters, list) else [broker.parameters]
        ):
            if params.blocked_connection_timeout is None:  # unless the URL says otherwise
                # A broker that blocks publishers (memory or disk alarm) fails the publish
                # instead of holding the publisher, and the sweeper's row locks, for ever.
                params.blocked_connection_timeout = BLOCKED_TIMEOUT_SECONDS
        return broker
    if scheme in ("redis", "rediss", "unix"):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(  # type: ignore[no-untyped-call]
            url=url, namespace=namespace, middleware=middleware
        )
    if scheme == "stub":
        return StubBroker(middleware=middleware)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}; use amqp://, redis:// or stub://")


def to_dramatiq(job: JobMessage) -> dramatiq.Message[None]:
    """The Dramatiq message of a job: its actor is the job type, its one argument the id."""
    return dramatiq.Message(
        queue_name=job.queue,
        actor_name=job.type,
        args=(str(job.job_id),),
        kwargs={},
        options={},
    )


class BrokerEnqueuer:
    """Publishes job messages on a small pool of threads, one broker connection each.

    Broker clients block (pika, redis-py), so nothing here runs on an event loop. After a
    failed publish, immediate publishing pauses briefly and the sweeper takes over: a job
    whose message was not confirmed stays unpublished in its row and is swept.
    """

    def __init__(self, broker: dramatiq.Broker, *, threads: int = 4, max_pending: int = 10_000):
        self.broker = broker
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="conveyor-publish")
        self._lock = threading.Lock()
        self._pending = 0
        self._max_pending = max_pending
        self._paused_until = 0.0
        self._confirmed: list[uuid.UUID] = []
        self._closed = False

    def publish(self, messages: Sequence[JobMessage]) -> None:
        for job in messages:
            self.broker.enqueue(to_dramatiq(job), delay=job.delay_ms or None)

    def publish_soon(self, message: JobMessage) -> None:
        with self._lock:
            if self._closed or self._pending >= self._max_pending:
                return  # the outbox sweep publishes it
            if time.monotonic() < self._paused_until:
                return
            self._pending += 1
        self._pool.submit(self._publish_one, message)

    def _publish_one(self, message: JobMessage) -> None:
        try:
            self.publish([message])
        except Exception as exc:  # the row stays unpublished; the sweeper retries
            with self._lock:
                self._paused_until = time.monotonic() + 2.0
            logger.warning("publish of job %s failed, left to the sweeper: %r", message.job_id, exc)
        else:
            with self._lock:
                if len(self._confirmed) < MAX_CONFIRMED:  # else: swept, a harmless duplicate
                    self._confirmed.append(message.job_id)
        finally:
            with self._lock:
                self._pending -= 1

    def waiting(self, queue: str) -> int | None:
        broker: Any = self.broker
        try:
            if isinstance(broker, StubBroker):
                return int(broker.queues[queue].qsize()) if queue in broker.queues else 0
            if hasattr(broker, "get_queue_message_counts"):  # RabbitMQ
                return int(broker.get_queue_message_counts(queue)[0])
            if hasattr(broker, "namespace"):  # Redis: a list of message ids per queue
                return int(broker.client.llen(f"{broker.namespace}:{queue}"))
        except Exception:  # unknown: the caller treats it as empty
            logger.warning("could not count the messages of queue %s", queue, exc_info=True)
        return None

    def take_confirmed(self) -> list[uuid.UUID]:
        """Job ids confirmed since the last call (`outbox.flush_confirmed` marks them
        published)."""
        with self._lock:
            confirmed, self._confirmed = self._confirmed, []
        return confirmed

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)


class _AlreadyClosed(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "called on closed connection" not in record.getMessage()


def close_broker(broker: dramatiq.Broker) -> None:
    """Close the broker's connections. Pika logs an error for each one its thread already
    closed, which at shutdown is no error at all: those lines are dropped meanwhile."""
    quiet = _AlreadyClosed()
    pika_log = logging.getLogger("pika.adapters.blocking_connection")
    pika_log.addFilter(quiet)
    try:
        broker.close()
    finally:
        pika_log.removeFilter(quiet)


def check_broker(broker: dramatiq.Broker, url: str) -> None:
    """Raise unless the broker answers (a fresh connection, so a stale one cannot lie)."""
    scheme = urlsplit(url).scheme
    if scheme in ("amqp", "amqps"):
        import pika

        params = pika.URLParameters(url)
        params.socket_timeout = 2
        params.blocked_connection_timeout = 2
        params.connection_attempts = 1
        pika.BlockingConnection(params).close()
    elif scheme in ("redis", "rediss", "unix"):
        broker.client.ping()  # type: ignore[attr-defined]
