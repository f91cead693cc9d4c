"""The web process's reading of the database-derived metrics (queue depths, the oldest
waiting job, live workers, the outbox, each pool's desired workers), on a thread of its own every
`CONVEYOR_METRICS_REFRESH_SECONDS`: a scrape of `/metrics` only reads the last reading, so it
never waits on the database, and it finds none while the database does not answer."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from conveyor.logs import Outage
from conveyor.services import capacity, queues, workers
from conveyor.services.capacity import PoolCapacity
from conveyor.services.queues import QueueStats
from conveyor.settings import Settings

logger = logging.getLogger(__name__)

#: Longest a reading may take (each statement, on PostgreSQL).
READ_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Reading:
    """The database-derived figures, as read at `at` (monotonic seconds)."""

    at: float
    queues: list[QueueStats]
    unpublished: int
    workers_alive: dict[str, int] = field(default_factory=dict)
    capacity: list[PoolCapacity] = field(default_factory=list)


class StatsReader(threading.Thread):
    """Reads the figures every `interval` seconds; `current()` is the last reading, or None
    after a failed one (or when it is older than two intervals and its timeout)."""

    def __init__(
        self,
        db: sessionmaker[Session],
        queue_names: Iterable[str],
        *,
        interval: float,
        worker_timeout: float,
        settings: Settings | None = None,
    ) -> None:
        """`settings`: those of the capacity signal, which is read only when given."""
        super().__init__(name="conveyor-stats", daemon=True)
        self.db = db
        self.queue_names = sorted(set(queue_names))
        self.interval = interval
        self.worker_timeout = dt.timedelta(seconds=worker_timeout)
        self.settings = settings
        self.stopping = threading.Event()
        self.outage = Outage("database (metrics)", logger)
        self._reading: Reading | None = None

    def current(self) -> Reading | None:
        reading = self._reading
        if reading is None:
            return None
        if time.monotonic() - reading.at > 2 * self.interval + READ_TIMEOUT_SECONDS:
            return None  # the reader is stuck (a statement the timeout did not end)
        return reading

    def read_once(self) -> Reading | None:
        """Read the figures now; None (and no reading kept) if the database failed."""
        try:
            timeout = min(READ_TIMEOUT_SECONDS, self.interval)
            at = time.monotonic()
            stats = queues.stats(self.db, self.queue_names, timeout_seconds=timeout)
            pools = []
            if self.settings is not None:
                pools = capacity.desired(
                    self.db, self.settings, stats=stats, timeout_seconds=timeout
                )
            reading = Reading(
                at=at,
                queues=stats,
                unpublished=queues.unpublished(self.db, timeout_seconds=timeout),
                workers_alive=workers.alive_by_pool(self.db, self.worker_timeout),
                capacity=pools,
            )
        except Exception as exc:
            self._reading = None
            self.outage.failed(exc)
            return None
        self.outage.succeeded()
        self._reading = reading
        return reading

    def run(self) -> None:
        while not self.stopping.is_set():
            self.read_once()
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=READ_TIMEOUT_SECONDS + 1)
