"""Dramatiq's Redis broker, changed so that no fetched message is left where nobody runs it.

Dramatiq's Redis broker moves each message a worker process fetches into that process's ack
set (`<namespace>:__acks__.<broker id>.<queue>`) until the process acknowledges it. Two
things leave a message there for minutes or for ever:

- **the process died**: Dramatiq puts its messages back once its heartbeat is older than the
  heartbeat timeout (60 s), and only in a maintenance pass that one command in a thousand
  runs, by chance;
- **the process lives but a consumer lost its connection**: a fetch that Redis ran but
  whose reply was lost, or the delayed messages a consumer drops from memory when Dramatiq
  restarts it, stay in the ack set of a process that no longer knows them, until it stops.

Here every consumer runs maintenance on its own queue on a schedule (`maintenance_interval`)
against a short `heartbeat_timeout`, and never by chance; and a consumer that starts (again)
first puts back the messages of its process's ack set that the process does not hold. A
message put back that was in fact handled is a duplicate, which the job's guarded claim skips.

The broker also tells whether Redis may have lost messages it had confirmed (it restarted, so
its `run_id` changed, or it was emptied) and which jobs' messages it holds, so that the web
process's sweeper can publish again the waiting jobs whose message is gone
(`conveyor.services.outbox.republish_lost`).

This builds on Dramatiq 2's Redis internals (its consumer class, its dispatch script's
maintenance flag and key names), hence the `<3` pin; tests/integration/test_redis_broker.py
fails if they change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.common import dq_name
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from conveyor.logs import Outage

logger = logging.getLogger(__name__)

#: Put back, first in line, the messages of an ack set that its process does not hold (ARGV).
RECLAIM = """
local acks, queue, messages = KEYS[1], KEYS[2], KEYS[3]
local held = {}
for i = 1, #ARGV do held[ARGV[i]] = true end
local returned = 0
for _, id in ipairs(redis.call("smembers", acks)) do
    if not held[id] then
        redis.call("srem", acks, id)
        if redis.call("hexists", messages, id) == 1 then
            redis.call("lpush", queue, id)
            returned = returned + 1
        end
    end
end
return returned
"""


class RedisBroker(DramatiqRedisBroker):
    """Dramatiq's Redis broker with scheduled maintenance and reclaimed ack sets.

    `heartbeat_timeout` and `maintenance_interval` are in seconds. A worker process that has
    not been heard from for `heartbeat_timeout` is taken for dead: the next maintenance of a
    live consumer of the same queue, at most `maintenance_interval` later, puts its messages
    back. Each consumer's maintenance is also its process's heartbeat.
    """

    def __init__(
        self,
        *,
        url: str,
        namespace: str,
        middleware: list[Middleware],
        heartbeat_timeout: float,
        maintenance_interval: float,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            url=url,
            namespace=namespace,
            middleware=middleware,
            heartbeat_timeout=int(heartbeat_timeout * 1000),
        )
        self.maintenance_interval = maintenance_interval
        self._reclaim = self.client.register_script(RECLAIM)
        self._lock = threading.Lock()
        self._held: defaultdict[str, set[str]] = defaultdict(set)
        self._quiet_until = 0.0
        #: The process's broker `Outage`, which the consumers report to (set by build_broker).
        self.outage: Outage | None = None

    @property
    def consumer_class(self) -> type[_Consumer]:
        return _Consumer

    def _should_do_maintenance(self, command: str) -> int:
        # On the consumers' schedule only, never by chance. And not for a heartbeat timeout
        # after this process lost its connection: if Redis was down, every worker's last
        # heartbeat is old, and the live ones need that long to send a new one.
        return int(command == "maintain" and time.monotonic() >= self._quiet_until)

    def maintain(self, queue_name: str) -> None:
        """Send this process's heartbeat; put back the messages that dead workers fetched
        from `queue_name`, and drop its expired dead letters (Dramatiq's maintenance)."""
        self._dispatch("maintain")(queue_name)  # type: ignore[no-untyped-call]

    def connection_lost(self, exc: BaseException) -> None:
        self._quiet_until = time.monotonic() + self.heartbeat_timeout / 1000
        if self.outage is not None:
            self.outage.failed(exc)

    def reclaim(self, queue_name: str) -> int:
        """Put back the messages of this process's ack set of `queue_name` that it does not
        hold; how many."""
        with self._lock:
            held = list(self._held[queue_name])
        keys = [
            f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}",
            f"{self.namespace}:{queue_name}",
            f"{self.namespace}:{queue_name}.msgs",
        ]
        return int(self._reclaim(keys=keys, args=held))

    @property
    def checked_key(self) -> str:
        """Holds the `run_id` of the Redis whose messages the job rows were last checked
        against; a restart changes the run id, and a flush takes the key with it."""
        return f"{self.namespace}:__checked__"

    def restarted(self) -> str | None:
        """This Redis's run id, if it may have lost messages since `checked` was last given
        it (it restarted or was emptied); None otherwise. One round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.info("server")
            pipe.get(self.checked_key)
            info, checked = pipe.execute()
        run_id = str(info["run_id"])
        return None if checked == run_id.encode() else run_id

    def checked(self, run_id: str) -> None:
        """Note that the job rows were checked against this Redis (run `run_id`). Written
        after the check, so a web process that dies during it leaves the check to the next;
        if Redis restarted meanwhile, its new run id differs and it is checked again."""
        self.client.set(self.checked_key, run_id)

    def held_job_ids(self, queue_name: str) -> set[str]:
        """The first argument (a job id) of each message Redis holds for `queue_name`:
        delayed, waiting, or fetched and not yet acknowledged. Read in pages (HSCAN), so
        Redis is never blocked for long, at the cost of a consistent view."""
        ids: set[str] = set()
        # The delay queue first: a due message moves from it to the queue, where it is
        # found next; read in the other order, it could slip between the two reads.
        for name in (dq_name(queue_name), queue_name):
            key = f"{self.namespace}:{name}.msgs"
            for _, data in self.client.hscan_iter(key, count=1000):
                try:
                    args = Message.decode(data).args
                except DecodeError:
                    continue
                if args:
                    ids.add(str(args[0]))
        return ids

    def hold(self, queue_name: str, message: MessageProxy) -> None:
        with self._lock:
            self._held[queue_name].add(message.options["redis_message_id"])

    def release(self, queue_name: str, messages: Iterable[MessageProxy]) -> None:
        with self._lock:
            held = self._held[queue_name]
            for message in messages:
                held.discard(message.options["redis_message_id"])

    def forget(self, queue_name: str) -> None:
        with self._lock:
            self._held[queue_name].clear()


class _Consumer(_RedisConsumer):
    """Dramatiq's Redis consumer, which reclaims its ack set when it starts, maintains its
    queue on a schedule and tells the broker which messages the process holds."""

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.conveyor_broker = broker
        self.reclaimed = False
        self.next_maintenance = 0.0
        if queue_name.endswith(".DQ"):
            # Dramatiq empties a delay queue's in-memory messages whenever it restarts its
            # consumer, so a new one holds none of them: all go back.
            broker.forget(queue_name)

    def __next__(self) -> MessageProxy | None:
        broker = self.conveyor_broker
        try:
            if not self.reclaimed:
                returned = broker.reclaim(self.queue_name)
                self.reclaimed = True
                if returned:
                    logger.warning(
                        "put back %d message(s) of queue %s that this worker had fetched but "
                        "no longer held (its connection to Redis was lost)",
                        returned,
                        self.queue_name,
                    )
            now = time.monotonic()
            if now >= self.next_maintenance:
                broker.maintain(self.queue_name)
                self.next_maintenance = now + broker.maintenance_interval
            message: MessageProxy | None = super().__next__()  # type: ignore[no-untyped-call]
        except redis.ConnectionError as exc:
            broker.connection_lost(exc)
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        except ConnectionClosed as exc:
            broker.connection_lost(exc)
            raise
        if broker.outage is not None:
            broker.outage.succeeded()
        if message is not None:
            broker.hold(self.queue_name, message)
        return message

    def ack(self, message: MessageProxy) -> None:
        # On a connection error it stays held, and Dramatiq retries.
        super().ack(message)  # type: ignore[no-untyped-call]
        self.conveyor_broker.release(self.queue_name, [message])

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)  # type: ignore[no-untyped-call]
        self.conveyor_broker.release(self.queue_name, [message])

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        dropped = list(messages)
        try:
            super().requeue(dropped)  # type: ignore[no-untyped-call]
        except redis.ConnectionError as exc:
            # Dramatiq closes a consumer expecting this error, not Redis's (which would end
            # the consumer's thread); the process no longer holds these, so the next consumer
            # puts them back.
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        finally:
            self.conveyor_broker.release(self.queue_name, dropped)
