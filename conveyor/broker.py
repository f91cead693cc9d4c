"""Builds the Dramatiq broker from settings, and publishes job messages through it."""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import dramatiq
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import CurrentMessage, Middleware

from conveyor.errors import BrokerUnavailableError
from conveyor.logs import Outage
from conveyor.services.jobs import JobMessage

if TYPE_CHECKING:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

logger = logging.getLogger(__name__)

T = TypeVar("T")

BLOCKED_TIMEOUT_SECONDS = 30
#: Confirmed ids kept for `take_confirmed`; past that, the sweeper publishes them again.
MAX_CONFIRMED = 100_000


def build_broker(
    url: str,
    *,
    namespace: str = "conveyor",
    redis_heartbeat_timeout: float = 10.0,
    redis_maintenance_interval: float = 1.0,
) -> dramatiq.Broker:
    """RabbitMQ (publisher confirms on), Redis or the in-process stub, by the URL's scheme.

    Dramatiq's own retry, time-limit and age-limit middleware are left out: the job row
    drives retries and limits (see `conveyor.workers.lifecycle`). Redis gets our broker,
    which puts back the messages of dead workers and lost connections (`conveyor.redisbroker`).
    """
    middleware: list[Middleware] = [CurrentMessage()]
    scheme = urlsplit(url).scheme
    if scheme in ("amqp", "amqps"):
        broker = _rabbitmq_broker_class()(url=url, confirm_delivery=True, middleware=middleware)
        for params in (
            broker.parameters if isinstance(broker.parameters, list) else [broker.parameters]
        ):
            if params.blocked_connection_timeout is None:  # unless the URL says otherwise
                # A broker that blocks publishers (memory or disk alarm) fails the publish
                # instead of holding the publisher, and the sweeper's row locks, for ever.
                params.blocked_connection_timeout = BLOCKED_TIMEOUT_SECONDS
        return broker
    if scheme in ("redis", "rediss", "unix"):
        from conveyor.redisbroker import RedisBroker

        redis_broker = RedisBroker(
            url=url,
            namespace=namespace,
            middleware=middleware,
            heartbeat_timeout=redis_heartbeat_timeout,
            maintenance_interval=redis_maintenance_interval,
        )
        redis_broker.outage = outage_of(redis_broker)  # its consumers report to it
        return redis_broker
    if scheme == "stub":
        return StubBroker(middleware=middleware)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}; use amqp://, redis:// or stub://")


@functools.cache
def unreachable_errors() -> tuple[type[BaseException], ...]:
    """What the broker clients raise when the broker cannot be reached or refuses messages
    (Dramatiq wraps only some of pika's and redis-py's errors)."""
    import pika.exceptions
    import redis.exceptions

    return (
        BrokerConnectionError,
        OSError,
        pika.exceptions.AMQPError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    )


_outages: weakref.WeakKeyDictionary[dramatiq.Broker, Outage] = weakref.WeakKeyDictionary()
_outages_lock = threading.Lock()


def outage_of(broker: dramatiq.Broker) -> Outage:
    """The broker's one `Outage` in this process: its publishers, queue counts and (on
    RabbitMQ) consumers report to it, so an outage is logged once, with its attempts
    counted."""
    with _outages_lock:
        outage = _outages.get(broker)
        if outage is None:
            outage = _outages[broker] = Outage("broker", logger)
        return outage


@functools.cache
def _rabbitmq_broker_class() -> type[RabbitmqBroker]:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    class WatchedRabbitmqBroker(RabbitmqBroker):
        """Dramatiq's RabbitMQ broker whose consumers report to the broker's `Outage`: the
        worker logs a lost connection once, not on each restart of each consumer."""

        def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
            outage = outage_of(self)
            try:
                consumer = super().consume(queue_name, prefetch, timeout)
            except BrokerConnectionError as exc:
                outage.failed(exc)
                raise
            outage.succeeded()  # the consumer connected
            return _WatchedConsumer(consumer, outage)

    return WatchedRabbitmqBroker


class _WatchedConsumer(Consumer):
    """A consumer that reports losing its connection to the `Outage` before Dramatiq's
    consumer thread logs it (and restarts it); otherwise just the consumer it wraps."""

    def __init__(self, consumer: Consumer, outage: Outage) -> None:
        self._consumer = consumer
        self._outage = outage

    def __next__(self) -> MessageProxy | None:
        try:
            return self._consumer.__next__()
        except BrokerConnectionError as exc:
            self._outage.failed(exc)
            raise

    def ack(self, message: MessageProxy) -> None:
        try:
            self._consumer.ack(message)
        except BrokerConnectionError as exc:
            self._outage.failed(exc)
            raise

    def nack(self, message: MessageProxy) -> None:
        try:
            self._consumer.nack(message)
        except BrokerConnectionError as exc:
            self._outage.failed(exc)
            raise

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        self._consumer.requeue(messages)

    def close(self) -> None:
        self._consumer.close()


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
    whose message was not confirmed stays unpublished in its row and is swept. Failures
    are reported to the broker's `Outage`, which logs the start and the end of an outage
    once each; the failed publishes themselves are logged at DEBUG.
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        threads: int = 4,
        max_pending: int = 10_000,
        on_failure: Callable[[int], object] | None = None,
    ):
        self.broker = broker
        #: Told how many messages a failed publish left unpublished (a metric).
        self.on_failure = on_failure
        self.outage = outage_of(broker)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="conveyor-publish")
        self._lock = threading.Lock()
        self._pending = 0
        self._max_pending = max_pending
        self._paused_until = 0.0
        self._confirmed: list[uuid.UUID] = []
        self._closed = False
        from conveyor.redisbroker import RedisBroker

        # Only a Redis broker can lose the messages it confirmed: RabbitMQ keeps persistent ones.
        self._redis = broker if isinstance(broker, RedisBroker) else None

    def publish(self, messages: Sequence[JobMessage]) -> None:
        """Publish and wait for the confirmations; BrokerUnavailableError when the broker
        did not take them (the rows stay in the outbox)."""
        try:
            for job in messages:
                self.broker.enqueue(to_dramatiq(job), delay=job.delay_ms or None)
        except unreachable_errors() as exc:
            self.outage.failed(exc)
            if self.on_failure is not None:
                self.on_failure(len(messages))
            raise BrokerUnavailableError(f"the broker did not take the message: {exc!r}") from exc
        self.outage.succeeded()

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
            # An outage is logged once, by `self.outage`; anything else here, every time.
            level = logging.DEBUG if isinstance(exc, BrokerUnavailableError) else logging.WARNING
            logger.log(
                level, "publish of job %s failed, left to the sweeper: %r", message.job_id, exc
            )
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
                count = int(broker.get_queue_message_counts(queue)[0])
            elif hasattr(broker, "namespace"):  # Redis: a list of message ids per queue
                count = int(broker.client.llen(f"{broker.namespace}:{queue}"))
            else:
                return None
        except unreachable_errors() as exc:  # unknown: the caller treats it as empty
            self.outage.failed(exc)
            logger.debug("could not count the messages of queue %s: %r", queue, exc)
            return None
        except Exception:
            logger.warning("could not count the messages of queue %s", queue, exc_info=True)
            return None
        self.outage.succeeded()
        return count

    def broker_restarted(self) -> str | None:
        if self._redis is None:
            return None
        return self._ask(self._redis.restarted)

    def held_jobs(self, queue: str) -> set[uuid.UUID]:
        if self._redis is None:
            return set()
        ids = set()
        for job_id in self._ask(functools.partial(self._redis.held_job_ids, queue)):
            try:
                ids.add(uuid.UUID(job_id))
            except ValueError:
                continue  # not a job's message
        return ids

    def restart_handled(self, token: str) -> None:
        if self._redis is not None:
            self._ask(functools.partial(self._redis.checked, token))

    def _ask(self, call: Callable[[], T]) -> T:
        """`call()`, reporting an unreachable broker to the `Outage` as a
        BrokerUnavailableError."""
        try:
            answer = call()
        except unreachable_errors() as exc:
            self.outage.failed(exc)
            raise BrokerUnavailableError(f"the broker did not answer: {exc!r}") from exc
        self.outage.succeeded()
        return answer

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
