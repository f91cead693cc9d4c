"""The worker side of the job lifecycle, as Dramatiq middleware and actors.

Every job type becomes a Dramatiq actor whose message carries only the job id. Running it:
claim the row (guarded; a duplicate or late message is acknowledged and skipped), re-validate
the payload, run the function under the job's time limit while a heartbeat renews the lease
and watches for cancellation, then let the outcome policy (`services.outcomes`) decide and
record what it decided (`services.runs.record`); a job that failed for good also has its
message dead-lettered. Attempts are counted in the row.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, Middleware

from conveyor import logs
from conveyor.bootstrap import Container
from conveyor.errors import AttemptLostError, JobTimeLimitError
from conveyor.metrics import NO_ERROR
from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.models.job import FINISHED
from conveyor.registry import JobType
from conveyor.services import outcomes, runs
from conveyor.services.jobs import JobMessage
from conveyor.services.outcomes import Attempt, Outcome
from conveyor.workers.context import STOP_REASONS, RunningJob
from conveyor.workers.presence import WorkerPresence

logger = logging.getLogger(__name__)

#: When the database cannot be reached to claim a job, its message comes back after this.
CLAIM_RETRY_MS = 5_000
#: The broker's errors that mean it could not be reached (the outcome policy does not know
#: Dramatiq): a job that meets one was cut short by infrastructure, not failed.
BROKER_ERRORS: tuple[type[BaseException], ...] = (dramatiq.errors.BrokerConnectionError,)


class _Heartbeat(threading.Thread):
    """Renews the leases of this process's running jobs, enforces time limits and stops the
    jobs that were cancelled or whose attempt no longer holds them."""

    def __init__(self, lifecycle: JobLifecycle) -> None:
        super().__init__(name="conveyor-heartbeat", daemon=True)
        self.lifecycle = lifecycle
        self.stopping = threading.Event()

    def run(self) -> None:
        container = self.lifecycle.container
        renew_every = min(self.lifecycle.lease.total_seconds() / 3, 1.0)
        next_renewal = 0.0
        while not self.stopping.wait(0.1):
            running = self.lifecycle.running_jobs()
            now = time.monotonic()
            for job in running:
                if job.deadline is not None and now > job.deadline:
                    job.interrupt(JobTimeLimitError)
            if running and now >= next_renewal:
                next_renewal = now + renew_every
                try:
                    stop = runs.renew_leases(
                        container.db,
                        {job.job_id: job.attempt for job in running},
                        self.lifecycle.lease,
                    )
                except runs.UNREACHABLE as exc:  # the next renewal reconnects
                    logger.warning("could not renew job leases (%r); trying again", exc)
                    continue
                except Exception:
                    logger.warning("could not renew job leases", exc_info=True)
                    continue
                for job in running:
                    if job.job_id in stop:
                        job.interrupt(STOP_REASONS[stop[job.job_id]])


class JobLifecycle(Middleware):
    """Dramatiq middleware that runs job attempts with the process's resources (`container`)
    and keeps the heartbeat of the running ones."""

    def __init__(
        self,
        container: Container,
        *,
        lease: dt.timedelta,
        close_container: bool = False,
        pool: str = "all",
    ) -> None:
        self.container = container
        self.registry = container.registry
        self.lease = lease
        self.close_container = close_container
        self.pool = pool
        self.metrics = container.metrics
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._running: dict[uuid.UUID, RunningJob] = {}
        self._running_lock = threading.Lock()
        self._heartbeat: _Heartbeat | None = None

    def running_jobs(self) -> list[RunningJob]:
        with self._running_lock:
            return list(self._running.values())

    # Dramatiq hooks

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._heartbeat = _Heartbeat(self)
        self._heartbeat.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stopping.set()
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        if self.close_container:
            self.container.close()

    # the actor body

    def run(self, job_type: JobType, raw_id: str) -> None:
        """Run one delivery of a job message (see the module docstring)."""
        try:
            job_id = uuid.UUID(raw_id)
        except ValueError:
            logger.error("message for %s carries no job id (%r); dropped", job_type.name, raw_id)
            return
        token = logs.job_id.set(raw_id)
        try:
            self._run(job_type, job_id)
        finally:
            logs.job_id.reset(token)

    def _run(self, job_type: JobType, job_id: uuid.UUID) -> None:
        container = self.container
        try:
            job = runs.claim(container.db, job_id, worker=self.worker_name, lease=self.lease)
        except Exception:
            # The database is unreachable: try this delivery again later rather than
            # acknowledge a job nobody ran (if the broker fails too, the sweeper's
            # requeue of long-waiting jobs is the last resort).
            logger.warning(
                "could not claim job %s; delivery retried in %ds",
                job_id,
                CLAIM_RETRY_MS // 1000,
                exc_info=True,
            )
            container.enqueuer.publish(
                [JobMessage(job_id, job_type.name, job_type.queue, CLAIM_RETRY_MS)]
            )
            return
        if job is None:
            logger.info("job %s is not due to run (finished, cancelled or taken); skipped", job_id)
            return
        metrics = self.metrics
        if job.due_at is not None:
            wait = (utcnow() - job.due_at).total_seconds()
            metrics.queue_wait.labels(job_type.name).observe(max(wait, 0.0))
        container.announcements.announce(job_id, JobStatus.RUNNING)
        limit = job_type.time_limit.total_seconds() if job_type.time_limit else None
        running = RunningJob(
            job_id=job_id,
            attempt=job.attempts,
            owner_id=job.owner_id,
            parent_id=job.parent_id,
            container=container,
            deadline=time.monotonic() + limit if limit else None,
            time_limit=limit,
            max_retries=job.max_retries,
            worker_losses=job.worker_losses,
        )
        with self._running_lock:
            self._running[job_id] = running
        in_flight = metrics.in_flight.labels(self.pool)
        in_flight.inc()
        label, error = "stopped", NO_ERROR
        try:
            started = time.perf_counter()
            outcome = self._execute(job_type, running, job.payload)
            metrics.run_time.labels(job_type.name).observe(time.perf_counter() - started)
            if outcome is not None and outcome.error:
                error = str(outcome.error.get("type") or NO_ERROR)
            if running.stopping() is AttemptLostError:
                label = "lost"
                # Not a cancel: whatever holds the job now (the reconciler, another attempt)
                # decides its outcome, so this attempt records nothing.
                logger.warning(
                    "job %s attempt %d no longer holds the job (its lease was taken back, or "
                    "it ended or runs elsewhere); stopped, nothing recorded",
                    job_id,
                    running.attempt,
                )
            elif outcome is not None:
                label = "unrecorded"  # unless the record below returns
                recorded = self._record(job_type, running, outcome)
                if recorded is None:
                    label = "lost"
                else:
                    label = "interrupted" if outcome.interrupted else recorded.value
                    if recorded in FINISHED:
                        metrics.finished.labels(job_type.name, recorded.value).inc()
        finally:
            in_flight.dec()
            metrics.attempts.labels(job_type.name, label, error).inc()
            with self._running_lock:  # a later attempt of the same job may have replaced it
                if self._running.get(job_id) is running:
                    del self._running[job_id]

    def _execute(
        self, job_type: JobType, running: RunningJob, payload: dict[str, Any]
    ) -> Outcome | None:
        """Run the function; what happened, as the outcome policy judges it (None: nothing
        to record, the attempt was cut short by the process stopping)."""
        try:
            validated = job_type.payload.model_validate(payload)
            if job_type.is_async:  # stopped by cancelling its task (see LoopThread.run)
                coro = job_type.call(validated, running)
                value = self.container.loop.run(coro, interrupt=running.stopping)
            else:  # stopped by an exception raised in its thread
                with running.user_code():
                    value = job_type.call(validated, running)
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            if running.stop_reason is None:  # the job loop closed under it: the process stops
                logger.warning("job %s was interrupted by the worker stopping", running.job_id)
                return None  # like a killed thread: the lease reconciler takes the job back
            return self._judge(job_type, running, running.stop_reason())
        except Exception as exc:
            return self._judge(job_type, running, exc)
        return outcomes.returned(value)

    def _judge(self, job_type: JobType, running: RunningJob, exc: BaseException) -> Outcome:
        attempt = Attempt(
            running.attempt,
            running.worker_losses,
            running.max_retries,
            self.container.settings.max_worker_losses,
        )
        return outcomes.raised(
            job_type, attempt, exc, time_limit=running.time_limit, infrastructure=BROKER_ERRORS
        )

    def _record(self, job_type: JobType, running: RunningJob, outcome: Outcome) -> JobStatus | None:
        job_id, attempt = running.job_id, running.attempt
        message = JobMessage(job_id, job_type.name, job_type.queue)
        if outcome.interrupted and outcome.status == JobStatus.RETRYING:
            logger.warning(
                "job %s attempt %d was cut short by a service failure (%s); runs again in "
                "%.1fs, not counted as a failure",
                job_id,
                attempt,
                outcome.error["message"] if outcome.error else "",
                (outcome.retry_in or dt.timedelta(0)).total_seconds(),
            )
        elif outcome.status == JobStatus.RETRYING:
            logger.info(
                "job %s attempt %d failed (%s); retry in %.1fs",
                job_id,
                attempt,
                outcome.error["message"] if outcome.error else "",
                (outcome.retry_in or dt.timedelta(0)).total_seconds(),
            )
        elif outcome.status == JobStatus.FAILED:
            # A permanent failure (bad input, a declared permanent error) is the job's answer;
            # retries spent on a failure that might have passed is what someone must look at.
            logger.log(
                logging.WARNING if outcome.permanent else logging.ERROR,
                "job %s failed %s after %d attempt(s): %s",
                job_id,
                "permanently" if outcome.permanent else "for good",
                attempt,
                outcome.error["message"] if outcome.error else "",
            )
        recorded = runs.record(
            self.container.db,
            self.container.enqueuer,
            self.container.announcements,
            message,
            attempt,
            outcome,
        )
        if recorded == JobStatus.FAILED:
            current = CurrentMessage.get_current_message()
            if current is not None:
                current.fail()  # type: ignore[attr-defined]  # nack: to the dead-letter queue
        return recorded


def install_lifecycle(
    broker: dramatiq.Broker,
    container: Container,
    *,
    queues: set[str] | None = None,
    close_container: bool = False,
    pool: str | None = None,
    on_beat: Callable[[], None] | None = None,
) -> JobLifecycle:
    """Give `broker` the lifecycle middleware and an actor per job type (of `queues`), and
    the worker registry's middleware. `pool` names the process's pool in the registry and
    the metrics (default: its queues, or `all`)."""
    lease = dt.timedelta(seconds=container.settings.lease_seconds)
    pool = pool or (",".join(sorted(queues)) if queues else "all")
    lifecycle = JobLifecycle(container, lease=lease, close_container=close_container, pool=pool)
    bind_actors(broker, lifecycle, queues=queues)
    broker.add_middleware(WorkerPresence(lifecycle, queues=queues, on_beat=on_beat))
    return lifecycle


def bind_actors(
    broker: dramatiq.Broker,
    lifecycle: JobLifecycle,
    *,
    queues: set[str] | None = None,
) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Declare one Dramatiq actor per job type (of the given queues) on `broker`."""
    if lifecycle not in broker.middleware:
        broker.add_middleware(lifecycle)
    actors = {}
    for job_type in lifecycle.registry:
        if queues is not None and job_type.queue not in queues:
            continue

        def body(job_id: str, _job_type: JobType = job_type) -> None:
            lifecycle.run(_job_type, job_id)

        body.__name__ = job_type.name.replace(".", "_")
        actors[job_type.name] = dramatiq.Actor(
            body,
            broker=broker,
            actor_name=job_type.name,
            queue_name=job_type.queue,
            priority=0,
            options={},
        )
    return actors
