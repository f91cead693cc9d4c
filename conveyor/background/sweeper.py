"""The background loop that keeps the outbox drained, delayed jobs on time and leases honest.

It runs in every `conveyor web` process and in `conveyor dev`; several may run at once, as
they take rows with FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

import sqlalchemy.exc
from sqlalchemy.orm import Session, sessionmaker

from conveyor.announcements import Announcer
from conveyor.errors import BrokerUnavailableError, is_infrastructure_error
from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.services import notifications, outbox, retention
from conveyor.services.jobs import Enqueuer

logger = logging.getLogger(__name__)

#: The shortest pause between passes, however soon the next scheduled job is due.
MIN_PAUSE = dt.timedelta(milliseconds=50)
#: How often, at most, to ask the broker whether it lost messages (a Redis restart).
RESTART_CHECK_SECONDS = 1.0
#: How often, at most, to end the deliveries whose job finished without them: looking at the
#: jobs finished since the last pass (and a margin, for transactions that committed late)...
RECONCILE_SECONDS = 5.0
RECONCILE_MARGIN = dt.timedelta(minutes=1)
#: ...and, at start and then this often, at every unfinished delivery.
RECONCILE_ALL_SECONDS = 600.0
#: How often to offer the hourly jobs (`hourly`); their idempotency key, the hour, makes each
#: run once an hour whatever the number of web processes.
HOURLY_CHECK_SECONDS = 60.0


class Sweeper(threading.Thread):
    """Every `interval`, or sooner when a scheduled job comes due: mark confirmed publishes,
    expire leases, queue due scheduled jobs, publish the outbox; at most every second,
    publish again what a broker that lost its data no longer holds; every
    `reconcile_interval`, fail the notification deliveries whose job ended without them (a
    cancel, lost workers); and every `retention_interval`, delete the finished jobs past
    their retention; every minute, `hourly` (which submits the hour's periodic jobs, once per
    hour across processes)."""

    def __init__(
        self,
        db: sessionmaker[Session],
        enqueuer: Enqueuer,
        announcer: Announcer,
        *,
        interval: float,
        grace: dt.timedelta,
        requeue_after: dt.timedelta,
        max_worker_losses: int,
        lease_hold: float = 0.0,
        retention_days: float = 0.0,
        retention_interval: float = 300.0,
        on_finished: Callable[[str, JobStatus], object] | None = None,
        reconcile_interval: float = RECONCILE_SECONDS,
        hourly: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(name="conveyor-sweeper", daemon=True)
        self.db = db
        self.enqueuer = enqueuer
        self.announcer = announcer
        self.interval = interval
        self.grace = grace
        self.requeue_after = requeue_after
        self.max_worker_losses = max_worker_losses
        #: Seconds after its last failure to reach the database before it expires leases:
        #: the workers' heartbeats could not renew them either, and renew them first.
        self.lease_hold = lease_hold
        #: Told of each job the lease reconciler ended (its type and status), for metrics.
        self.on_finished = on_finished
        self._expire_from = 0.0
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._next_pass = utcnow()
        self._requested: dt.datetime | None = None
        self._next_restart_check = 0.0
        #: Finished jobs older than this many days are deleted (0: kept forever), every
        #: `retention_interval` seconds; sooner while a backlog remains.
        self.retention_days = retention_days
        self.retention_interval = retention_interval
        self._next_retention = 0.0
        self.reconcile_interval = reconcile_interval
        self._next_reconcile = 0.0
        self._next_full_reconcile = 0.0
        self._reconciled_until: dt.datetime | None = None
        self.hourly = hourly
        # Not at start: a process that starts submits no work before it has settled.
        self._next_hourly = time.monotonic() + HOURLY_CHECK_SECONDS

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sweep_once()
            self._sleep()
        outbox.flush_confirmed(self.db, self.enqueuer)

    def _sleep(self) -> None:
        """Until the next pass: `interval` from now, or when the next scheduled job is due."""
        due = utcnow() + dt.timedelta(seconds=self.interval)
        try:
            first = outbox.next_due(self.db)
        except Exception as exc:
            logger.warning("could not read when the next scheduled job is due: %r", exc)
            first = None
        if first is not None:  # a due row still there is locked by another sweeper: not a spin
            first = max(first, utcnow() + MIN_PAUSE)
        with self._lock:
            # A wake-up asked for while the query ran may be for a job it did not see yet.
            candidates = [due, first, self._requested]
            self._next_pass = min(when for when in candidates if when is not None)
            self._requested = None
            self._wake.clear()
        while not self.stopping.is_set():
            with self._lock:
                remaining = (self._next_pass - utcnow()).total_seconds()
            if remaining <= 0 or self._wake.wait(remaining):
                return

    def wake_at(self, when: dt.datetime) -> None:
        """Make the next pass no later than `when` (a job was scheduled for then)."""
        with self._lock:
            if self._requested is None or when < self._requested:
                self._requested = when
            if when < self._next_pass:
                self._next_pass = when
                self._wake.set()

    def sweep_once(self) -> None:
        """One pass; failures are logged and retried on the next pass."""
        try:
            outbox.flush_confirmed(self.db, self.enqueuer)
            if time.monotonic() >= self._expire_from:
                outbox.expire_leases(
                    self.db,
                    self.enqueuer,
                    self.announcer,
                    max_worker_losses=self.max_worker_losses,
                    on_finished=self.on_finished,
                )
            while outbox.promote_due(self.db, self.enqueuer, self.announcer):
                pass  # a full batch: there may be more
            while outbox.publish_pending(
                self.db, self.enqueuer, grace=self.grace, requeue_after=self.requeue_after
            ):
                pass
            # Last, so a failure here never holds up the passes above.
            if time.monotonic() >= self._next_restart_check:
                self._next_restart_check = time.monotonic() + RESTART_CHECK_SECONDS
                outbox.republish_lost(self.db, self.enqueuer)
            if time.monotonic() >= self._next_reconcile:
                self.reconcile_deliveries()
            if self.hourly is not None and time.monotonic() >= self._next_hourly:
                self._next_hourly = time.monotonic() + HOURLY_CHECK_SECONDS
                self.hourly()
            if self.retention_days > 0 and time.monotonic() >= self._next_retention:
                self._next_retention = time.monotonic() + self.retention_interval
                full = retention.BATCH * retention.MAX_BATCHES
                if retention.purge_expired(self.db, self.retention_days) >= full:
                    self._next_retention = 0.0  # a backlog: go on at the next pass
        except BrokerUnavailableError as exc:  # the enqueuer logged the outage once
            logger.debug("sweep stopped at the broker (will retry): %r", exc)
        except Exception as exc:
            if isinstance(exc, sqlalchemy.exc.SQLAlchemyError) and is_infrastructure_error(exc):
                # Leases ran out meanwhile because no heartbeat could renew them, not because
                # workers died: once the database is back, give the heartbeats time first.
                self._expire_from = time.monotonic() + self.lease_hold
            logger.warning("sweep failed (will retry): %r", exc)

    def reconcile_deliveries(self) -> None:
        """Fail the deliveries whose job ended without them (see `notifications.reconcile`):
        those of the jobs finished since the last pass, or, at start and every
        RECONCILE_ALL_SECONDS, all of them."""
        self._next_reconcile = time.monotonic() + self.reconcile_interval
        started = utcnow()
        since = None
        if time.monotonic() < self._next_full_reconcile and self._reconciled_until is not None:
            since = self._reconciled_until - RECONCILE_MARGIN
        full = notifications.RECONCILE_BATCH
        while notifications.reconcile(self.db, finished_since=since) >= full:
            pass  # a full batch: there may be more
        if since is None:
            self._next_full_reconcile = time.monotonic() + RECONCILE_ALL_SECONDS
        self._reconciled_until = started

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout=10)
