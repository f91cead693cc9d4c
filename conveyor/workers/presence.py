"""The worker registry's side in each worker process: a thread that records the process
(`services.workers.beat`) every `CONVEYOR_WORKER_HEARTBEAT_SECONDS`, keeps the `up` and
heartbeat gauges, and deletes its row when the worker stops cleanly."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.middleware import Middleware

from conveyor.logs import Outage
from conveyor.models.base import utcnow
from conveyor.services import workers
from conveyor.services.workers import WorkerProcess

if TYPE_CHECKING:
    from conveyor.workers.lifecycle import JobLifecycle

logger = logging.getLogger(__name__)


class WorkerPresence(Middleware):
    """Dramatiq middleware: the process's row in the worker registry, and its heartbeat
    gauges. `on_beat` runs after each heartbeat (the pool's process metrics)."""

    def __init__(
        self,
        lifecycle: JobLifecycle,
        *,
        queues: Collection[str] | None = None,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.queues = sorted(queues) if queues else sorted({t.queue for t in lifecycle.registry})
        self.on_beat = on_beat
        self.process: WorkerProcess | None = None
        self._thread: _Beat | None = None

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.process = WorkerProcess(
            id=uuid.uuid4().hex,
            pool=self.lifecycle.pool,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            threads=int(getattr(worker, "worker_threads", 0)),
            started_at=utcnow(),
        )
        self._thread = _Beat(self, self.process)
        self._thread.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._thread is None or self.process is None:
            return
        self._thread.stopping.set()
        self._thread.join(timeout=5)
        self._thread = None
        metrics = self.lifecycle.metrics
        metrics.up.labels(self.lifecycle.pool).set(0)
        try:
            workers.remove(self.lifecycle.container.db, self.process.id)
        except Exception as exc:  # it drops off the list once its heartbeat is old
            logger.warning("could not remove this worker from the registry: %r", exc)


class _Beat(threading.Thread):
    def __init__(self, presence: WorkerPresence, process: WorkerProcess) -> None:
        super().__init__(name="conveyor-presence", daemon=True)
        self.presence = presence
        self.process = process
        self.stopping = threading.Event()
        self.outage = Outage("worker registry (database)", logger)

    def run(self) -> None:
        lifecycle = self.presence.lifecycle
        settings = lifecycle.container.settings
        timeout = dt.timedelta(seconds=settings.worker_timeout_seconds)
        up = lifecycle.metrics.up.labels(lifecycle.pool)
        heartbeat = lifecycle.metrics.heartbeat.labels(lifecycle.pool)
        lifecycle.metrics.in_flight.labels(lifecycle.pool).inc(0)  # the series exists at 0
        while True:
            try:
                workers.beat(
                    lifecycle.container.db,
                    self.process,
                    len(lifecycle.running_jobs()),
                    prune_after=timeout,
                )
            except Exception as exc:
                self.outage.failed(exc)
                up.set(0)
            else:
                self.outage.succeeded()
                up.set(1)
                heartbeat.set(time.time())
            if self.presence.on_beat is not None:
                try:
                    self.presence.on_beat()
                except Exception:
                    logger.warning("could not update the process metrics", exc_info=True)
            if self.stopping.wait(settings.worker_heartbeat_seconds):
                return
