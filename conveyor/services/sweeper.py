"""The background loop that keeps the outbox drained and the leases honest.

It runs in every `conveyor web` process and in `conveyor dev`; several may run at once, as
they take rows with FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.services.jobs import Enqueuer, Notifier
from conveyor.services.outbox import expire_leases, mark_published, publish_pending

logger = logging.getLogger(__name__)


class Sweeper(threading.Thread):
    """Every `interval`: mark confirmed publishes, expire leases, publish the outbox."""

    def __init__(
        self,
        db: sessionmaker[Session],
        enqueuer: Enqueuer,
        notifier: Notifier,
        *,
        interval: float,
        grace: dt.timedelta,
        requeue_after: dt.timedelta,
        max_worker_losses: int,
    ) -> None:
        super().__init__(name="conveyor-sweeper", daemon=True)
        self.db = db
        self.enqueuer = enqueuer
        self.notifier = notifier
        self.interval = interval
        self.grace = grace
        self.requeue_after = requeue_after
        self.max_worker_losses = max_worker_losses
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sweep_once()
        self.flush_confirmed()

    def flush_confirmed(self) -> None:
        confirmed = self.enqueuer.take_confirmed()
        if confirmed:
            with transaction(self.db) as session:
                mark_published(session, confirmed, first_only=True)

    def sweep_once(self) -> None:
        """One pass; failures are logged and retried on the next pass."""
        try:
            self.flush_confirmed()
            expire_leases(
                self.db, self.enqueuer, self.notifier, max_worker_losses=self.max_worker_losses
            )
            while publish_pending(
                self.db, self.enqueuer, grace=self.grace, requeue_after=self.requeue_after
            ):
                pass  # a full batch: there may be more
        except Exception as exc:
            logger.warning("sweep failed (will retry): %r", exc)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
