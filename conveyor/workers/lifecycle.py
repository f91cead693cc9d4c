"""The worker side of the job lifecycle, as Dramatiq middleware and actors.

Every job type becomes a Dramatiq actor whose message carries only the job id. Running it:
claim the row (guarded; a duplicate or late message is acknowledged and skipped, and the job
of a paused queue is parked for after its resume: `services.runs.park`), re-validate
the payload, run the function under the job's time limit while a heartbeat renews the lease
and watches for cancellation, then let the outcome policy (`services.outcomes`) decide and
record what it decided (`services.runs.record`); a job that failed for good also has its
message dead-lettered. Attempts are counted in the row.

A worker told to stop (Dramatiq's `worker_shutdown`) takes no new message, gives its running
jobs the drain time (`CONVEYOR_WORKER_DRAIN_SECONDS`) to finish, then hands back those still
running (`services.runs.hand_back`): they run again elsewhere, charged neither as a failure
nor as a lost worker.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import datetime as dt
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, Middleware

from conveyor import logs
from conveyor.bootstrap import Container
from conveyor.errors import (
    AttemptLostError,
    JobCancelledError,
    JobTimeLimitError,
    RetryLater,
    WorkerStoppingError,
)
from conveyor.metrics import NO_ERROR
from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.models.job import FINISHED
from conveyor.registry import JobType
from conveyor.services import outcomes, runs
from conveyor.services.jobs import JobMessage
from conveyor.services.outbox import publish_now
from conveyor.services.outcomes import Attempt, Outcome
from conveyor.services.tracebacks import Tracebacks
from conveyor.workers.context import STOP_REASONS, RunningJob
from conveyor.workers.presence import WorkerPresence

logger = logging.getLogger(__name__)

#: When the database cannot be reached to claim a job, its message comes back after this.
CLAIM_RETRY_MS = 5_000
#: The broker's errors that mean it could not be reached (the outcome policy does not know
#: Dramatiq): a job that meets one was cut short by infrastructure, not failed.
BROKER_ERRORS: tuple[type[BaseException], ...] = (dramatiq.errors.BrokerConnectionError,)
#: After the drain time, how long the handed-back jobs get to notice and let go of their
#: threads (a job stuck where it cannot be interrupted is left to the process's exit: it was
#: handed back already, and whatever it records later is refused by the guarded UPDATEs).
WIND_DOWN_SECONDS = 1.0


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
        drain_seconds: float | None = None,
        pool: str = "all",
    ) -> None:
        self.container = container
        self.registry = container.registry
        self.lease = lease
        self.close_container = close_container
        if drain_seconds is None:
            drain_seconds = container.settings.worker_drain_seconds
        self.drain_seconds = drain_seconds
        self.pool = pool
        self.metrics = container.metrics
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self.tracebacks = Tracebacks.of(container.settings)
        self._running: dict[uuid.UUID, RunningJob] = {}
        #: Guards `_running` and the stop state below; notified as deliveries end.
        self._running_lock = threading.Condition(threading.Lock())
        #: Deliveries being handled (claim, run, record) by job, and those jobs' types.
        self._in_hand: collections.Counter[uuid.UUID] = collections.Counter()
        self._types: dict[uuid.UUID, JobType] = {}
        self._stopping = False
        self._worker: Any = None
        self._heartbeat: _Heartbeat | None = None

    def running_jobs(self) -> list[RunningJob]:
        with self._running_lock:
            return list(self._running.values())

    # Dramatiq hooks

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        with self._running_lock:  # a worker started again (tests) takes deliveries again
            self._stopping = False
        self._worker = worker
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._heartbeat = _Heartbeat(self)
        self._heartbeat.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._worker = worker
        self.stop_taking_messages()
        self.drain()

    def stop_taking_messages(self) -> None:
        """The worker's threads take no new message once their job is done (the messages
        fetched meanwhile go back to the broker when the worker stops). It only sets flags,
        so a signal handler may call it: the worker process's main loop notices a stop
        signal up to a second later."""
        for thread in getattr(self._worker, "workers", ()):
            thread.stop()

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
            with self._running_lock:
                admitted = not self._stopping
                if admitted:
                    self._in_hand[job_id] += 1
                    self._types[job_id] = job_type
            if not admitted:
                self._pass_on(job_type, job_id)
                return
            try:
                self._run(job_type, job_id)
            finally:
                with self._running_lock:
                    self._in_hand[job_id] -= 1
                    if not self._in_hand[job_id]:
                        del self._in_hand[job_id], self._types[job_id]
                    self._running_lock.notify_all()
        finally:
            logs.job_id.reset(token)

    # stopping

    def drain(self) -> None:
        """Stop: no new delivery is taken, running jobs get `drain_seconds` to finish, then
        those still running are handed back (see `services.runs.hand_back`)."""
        deadline = time.monotonic() + self.drain_seconds
        with self._running_lock:
            self._stopping = True
            busy = self._in_hand.total()
        for running in self.running_jobs():
            token = logs.job_id.set(str(running.job_id))
            try:
                logger.info(
                    "worker stopping: job %s attempt %d gets %gs to finish, or is handed back",
                    running.job_id,
                    running.attempt,
                    self.drain_seconds,
                )
            finally:
                logs.job_id.reset(token)
        with self._running_lock:
            while self._in_hand and (left := deadline - time.monotonic()) > 0:
                self._running_lock.wait(left)
        handed: set[uuid.UUID] = set()
        wind_down = time.monotonic() + WIND_DOWN_SECONDS
        while True:
            for running in self.running_jobs():
                if running.job_id not in handed:
                    handed.add(running.job_id)
                    self._hand_back(running)
            with self._running_lock:
                if not self._in_hand or (left := wind_down - time.monotonic()) <= 0:
                    break
                self._running_lock.wait(min(left, 0.1))
        if busy:
            logger.info(
                "worker stopping: %d job(s) finished, %d handed back",
                busy - len(handed),
                len(handed),
            )

    def _hand_back(self, running: RunningJob) -> None:
        """Stop a job still running after the drain time and put it back in its queue."""
        job_id, attempt = running.job_id, running.attempt
        with self._running_lock:
            job_type = self._types.get(job_id)
        token = logs.job_id.set(str(job_id))
        try:
            running.interrupt(WorkerStoppingError)
            db = self.container.db
            try:
                status = runs.persistently(
                    functools.partial(runs.hand_back, db, job_id, attempt),
                    what="hand back a job",
                    delays=(0.1, 0.5),
                )
            except Exception:
                logger.warning(
                    "could not hand back job %s attempt %d; the lease reconciler takes it back",
                    job_id,
                    attempt,
                    exc_info=True,
                )
                return
            if status is None:
                return  # it ended meanwhile
            self.container.announcements.announce(job_id, status)
            if status == JobStatus.CANCELLED:
                logger.info("job %s was cancelled while its worker stopped", job_id)
                return
            logger.warning(
                "job %s attempt %d handed back: still running after the drain time (%gs); "
                "it runs again, not counted as a failure or a lost worker",
                job_id,
                attempt,
                self.drain_seconds,
            )
            if job_type is not None:
                message = JobMessage(job_id, job_type.name, job_type.queue)
                publish_now(db, self.container.enqueuer, [message], "handed back")
        finally:
            logs.job_id.reset(token)

    def _skip(self, job_id: uuid.UUID) -> bool:
        """A delivery whose job this worker could not claim: True if it should claim it again,
        else the message is acknowledged. A job of a paused queue is parked first (published
        again after the resume); a job whose queue was resumed between the claim and the park
        is claimed again (the resume did not publish it: its message was still out, this
        one); any other is finished, cancelled or taken (a late or duplicate message)."""
        try:
            parked = runs.park(self.container.db, job_id)
        except Exception:
            # The message is acknowledged all the same: once the queue is resumed, the
            # sweeper publishes a waiting job whose message is long gone.
            logger.warning(
                "could not check whether job %s waits in a paused queue", job_id, exc_info=True
            )
            return False
        if parked is runs.Park.PARKED:
            logger.info("job %s waits: its queue is paused", job_id)
        elif parked is runs.Park.RESUMED:
            logger.info("job %s: its queue was resumed as it was parked; claimed again", job_id)
            return True
        else:
            logger.info("job %s is not due to run (finished, cancelled or taken); skipped", job_id)
        return False

    def _pass_on(self, job_type: JobType, job_id: uuid.UUID) -> None:
        """A delivery that reached a stopping worker: sent again for another worker (the job
        row is untouched; should the broker refuse, the sweeper publishes the job again once
        its message is `CONVEYOR_REQUEUE_AFTER_SECONDS` old, as for any lost message)."""
        logger.info("worker stopping: job %s left to another worker", job_id)
        try:
            self.container.enqueuer.publish([JobMessage(job_id, job_type.name, job_type.queue)])
        except Exception:
            logger.warning(
                "could not pass job %s on; the sweeper publishes it again later",
                job_id,
                exc_info=True,
            )

    def _run(self, job_type: JobType, job_id: uuid.UUID) -> None:
        container = self.container
        try:
            job = runs.claim(container.db, job_id, worker=self.worker_name, lease=self.lease)
            # Claimed again at most once: the claim is the one guarded UPDATE that starts an
            # attempt, so however many messages the job has, one attempt runs. Should this
            # claim fail too (paused again, say), the park left the job unpublished, for the
            # resume or the sweep.
            if job is None and self._skip(job_id):
                job = runs.claim(container.db, job_id, worker=self.worker_name, lease=self.lease)
                if job is None:
                    logger.info(
                        "job %s was not claimed again (paused again, or taken); if it waits, "
                        "the resume or the outbox sweep publishes it",
                        job_id,
                    )
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
            return
        metrics = self.metrics
        if job.due_at is not None:
            wait = (utcnow() - job.due_at).total_seconds()
            metrics.queue_wait.labels(job_type.name).observe(max(wait, 0.0))
        container.announcements.announce(job_id, JobStatus.RUNNING)
        logger.info(
            "job %s (%s) attempt %d started on queue %s",
            job_id,
            job_type.name,
            job.attempts,
            job_type.queue,
            extra={"job_type": job_type.name, "attempt": job.attempts, "queue": job_type.queue},
        )
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
            handbacks=job.handbacks,
        )
        with self._running_lock:
            self._running[job_id] = running
        in_flight = metrics.in_flight.labels(self.pool)
        in_flight.inc()
        label, error = "stopped", NO_ERROR
        try:
            started = time.perf_counter()
            outcome = self._execute(job_type, running, job.payload)
            duration = time.perf_counter() - started
            metrics.run_time.labels(job_type.name).observe(duration)
            if outcome is not None and outcome.error:
                error = str(outcome.error.get("type") or NO_ERROR)
            stop = running.stopping()
            if stop is WorkerStoppingError and (
                outcome is None or outcome.status != JobStatus.SUCCEEDED
            ):
                # Handed back by `drain`: it runs again elsewhere. (A success that came
                # first is still recorded if the job was not yet handed back.)
                label = "handed_back"
                logger.info("job %s attempt %d stopped: handed back", job_id, running.attempt)
            elif stop is AttemptLostError:
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
                recorded = self._record(job_type, running, outcome, duration)
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
        stopped_at: list[BaseException] = []  # where an async job's task was cancelled
        try:
            validated = job_type.payload.model_validate(payload)
            if job_type.is_async:  # stopped by cancelling its task (see LoopThread.run)
                coro = _as_job(job_type.call(validated, running), str(running.job_id), stopped_at)
                value = self.container.loop.run(coro, interrupt=running.stopping)
            else:  # stopped by an exception raised in its thread
                with running.user_code():
                    value = job_type.call(validated, running)
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            if running.stop_reason is None:  # the job loop closed under it: the process stops
                logger.warning("job %s was interrupted by the worker stopping", running.job_id)
                return None  # like a killed thread: the lease reconciler takes the job back
            return self._judge(job_type, running, _where(running.stop_reason(), stopped_at))
        except Exception as exc:
            if running.stop_reason is not None and isinstance(exc, running.stop_reason):
                return self._judge(job_type, running, _where(exc, stopped_at))
            return self._judge(job_type, running, exc)
        return outcomes.returned(value)

    def _judge(self, job_type: JobType, running: RunningJob, exc: BaseException) -> Outcome:
        attempt = Attempt(
            running.attempt,
            running.worker_losses,
            running.max_retries,
            self.container.settings.max_worker_losses,
            handbacks=running.handbacks,
        )
        # A cancel and a retry the job asked for are not failures: no traceback to read.
        planned = isinstance(exc, JobCancelledError | RetryLater)
        traceback = None if planned else self.tracebacks.format(exc)
        outcome = outcomes.raised(
            job_type,
            attempt,
            exc,
            time_limit=running.time_limit,
            infrastructure=BROKER_ERRORS,
            traceback=traceback,
        )
        if outcome.error is not None:  # the owner reads it: no server secret in it
            message = self.tracebacks.mask(outcome.error["message"])
            outcome = replace(outcome, error={**outcome.error, "message": message})
        return outcome

    def _record(
        self, job_type: JobType, running: RunningJob, outcome: Outcome, duration: float
    ) -> JobStatus | None:
        job_id, attempt = running.job_id, running.attempt
        message = JobMessage(job_id, job_type.name, job_type.queue)
        _log_end(job_type, running, outcome, duration)
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


async def _as_job(
    coro: Coroutine[Any, Any, Any], job_id: str, stopped_at: list[BaseException]
) -> Any:
    """`coro`, with the job's id in the log context of its task (which the job loop's thread
    runs, outside the worker thread's context); if the task is cancelled (to stop the job),
    the cancellation is kept in `stopped_at`: its traceback says where the job was."""
    logs.job_id.set(job_id)  # the task's own copy of the context: nothing leaks
    try:
        return await coro
    except asyncio.CancelledError as exc:
        stopped_at.append(exc)
        raise


def _where(exc: BaseException, stopped_at: list[BaseException]) -> BaseException:
    """The reason an async job was stopped (a time limit, a cancel), with the traceback of
    where its task was when it was cancelled, if it was."""
    return exc.with_traceback(stopped_at[0].__traceback__) if stopped_at else exc


def _log_end(job_type: JobType, running: RunningJob, outcome: Outcome, duration: float) -> None:
    """The line that ends an attempt: at INFO, but WARNING for a retry (with the traceback,
    unless the job asked for it with `RetryLater` or a service failure cut it short) and a
    permanent failure, ERROR for a job that failed for good. A permanent failure (bad input,
    a declared permanent error) is the job's answer; retries spent on a failure that might
    have passed is what someone must look at."""
    status = outcome.status
    message = (outcome.error or {}).get("message", "")
    level, exc_info = logging.INFO, None
    what, detail = status.value, ""
    if outcome.interrupted and status == JobStatus.RETRYING:
        level = logging.WARNING
        what = "was cut short by a service failure"
        detail = f": {message}; runs again in {_seconds(outcome)}, not counted as a failure"
    elif status == JobStatus.RETRYING:
        what, detail = "failed", f": {message}; retry in {_seconds(outcome)}"
        if not isinstance(outcome.exception, RetryLater):
            level, exc_info = logging.WARNING, outcome.exception
    elif status == JobStatus.FAILED:
        level = logging.WARNING if outcome.permanent else logging.ERROR
        exc_info = None if outcome.interrupted else outcome.exception
        what = "failed permanently" if outcome.permanent else "failed for good"
        detail = f": {message}"
    fields: dict[str, Any] = {
        "job_type": job_type.name,
        "attempt": running.attempt,
        "duration_ms": round(duration * 1000, 1),
        "outcome": status.value,
    }
    if outcome.error:
        fields["error_type"] = outcome.error["type"]
    logger.log(
        level,
        "job %s (%s) attempt %d %s after %.3fs%s",
        running.job_id,
        job_type.name,
        running.attempt,
        what,
        duration,
        detail,
        exc_info=exc_info,
        extra=fields,
    )


def _seconds(outcome: Outcome) -> str:
    return f"{(outcome.retry_in or dt.timedelta(0)).total_seconds():.1f}s"


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
