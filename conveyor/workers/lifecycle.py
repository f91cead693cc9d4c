"""The worker side of the job lifecycle, as Dramatiq middleware and actors.

Every job type becomes a Dramatiq actor whose message carries only the job id. Running it:
claim the row (guarded; a duplicate or late message is acknowledged and skipped), re-validate
the payload, run the function under the job's time limit while a heartbeat renews the lease
and watches for cancellation, then record `succeeded`, `retrying` (publishing the delayed
retry) or `failed` (and dead-letter the message). Attempts are counted in the row.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dramatiq
from dramatiq.middleware import CurrentMessage, Middleware
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from conveyor import logs
from conveyor.db import transaction
from conveyor.errors import JobCancelledError, PermanentJobError, TransientError
from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.registry import JOBS, JobType, Registry
from conveyor.services import runs
from conveyor.services.jobs import Enqueuer, JobMessage, Notifier
from conveyor.services.outbox import mark_published

logger = logging.getLogger(__name__)

#: When the database cannot be reached to claim a job, its message comes back after this.
CLAIM_RETRY_MS = 5_000
#: Pauses between attempts to record an outcome while the database is unreachable.
RECORD_RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


class JobTimeLimitError(Exception):
    """Raised inside a job that ran past its time limit."""


@dataclass
class Resources:
    """What the lifecycle needs in a worker process."""

    db: sessionmaker[Session]
    notifier: Notifier
    enqueuer: Enqueuer
    close: Callable[[], None] = lambda: None


@dataclass(eq=False)
class RunningJob:
    """A job attempt in progress on one worker thread; also the job's `ctx`."""

    job_id_: uuid.UUID
    attempt: int
    thread_id: int
    deadline: float | None
    db: sessionmaker[Session]
    notifier: Notifier
    max_retries: int = 0
    worker_losses: int = 0
    time_limit: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: type[BaseException] | None = None
    in_user_code: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def job_id(self) -> str:
        return str(self.job_id_)

    @property
    def cancelled(self) -> bool:
        return self.stop.is_set()

    def progress(self, fraction: float, message: str | None = None) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if runs.report_progress(self.db, self.job_id_, self.attempt, fraction, message):
            self.interrupt(JobCancelledError)
        self.notifier.publish(self.job_id_, JobStatus.RUNNING)
        self.raise_if_stopped()

    def sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)
        self.raise_if_stopped()

    def raise_if_stopped(self) -> None:
        if self.stop.is_set() and self.stop_reason is not None:
            raise self.stop_reason()

    def interrupt(self, reason: type[BaseException]) -> None:
        """Stop the job: wake `ctx.sleep`, and raise `reason` in its thread if it is in
        user code (as Dramatiq's time limits do)."""
        with self.lock:
            if self.stop.is_set():
                return
            self.stop_reason = reason
            self.stop.set()
            if self.in_user_code and self.thread_id != threading.get_ident():
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread_id), ctypes.py_object(reason)
                )

    @contextlib.contextmanager
    def user_code(self) -> Iterator[None]:
        with self.lock:
            self.in_user_code = True
        try:
            yield
        finally:
            with self.lock:
                self.in_user_code = False
                if self.stop.is_set():  # drop an interrupt not yet delivered
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)


class _Heartbeat(threading.Thread):
    """Renews the leases of this process's running jobs, enforces time limits and delivers
    cancellations."""

    def __init__(self, lifecycle: JobLifecycle) -> None:
        super().__init__(name="conveyor-heartbeat", daemon=True)
        self.lifecycle = lifecycle
        self.stopping = threading.Event()

    def run(self) -> None:
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
                        self.lifecycle.resources.db,
                        {job.job_id_: job.attempt for job in running},
                        self.lifecycle.lease,
                    )
                except Exception:
                    logger.warning("could not renew job leases", exc_info=True)
                    continue
                for job in running:
                    if job.job_id_ in stop:
                        job.interrupt(JobCancelledError)


class JobLifecycle(Middleware):
    """Dramatiq middleware owning the per-process resources and the running-job heartbeat."""

    def __init__(
        self,
        resources: Callable[[], Resources],
        *,
        lease: dt.timedelta,
        registry: Registry = JOBS,
    ) -> None:
        self._make_resources = resources
        self._resources: Resources | None = None
        self._resources_lock = threading.Lock()
        self.lease = lease
        self.registry = registry
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._running: dict[uuid.UUID, RunningJob] = {}
        self._running_lock = threading.Lock()
        self._heartbeat: _Heartbeat | None = None

    @property
    def resources(self) -> Resources:
        if self._resources is None:
            with self._resources_lock:
                if self._resources is None:
                    self._resources = self._make_resources()
        return self._resources

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
        if self._resources is not None:
            self._resources.close()
            self._resources = None

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
        res = self.resources
        try:
            job = runs.claim(res.db, job_id, worker=self.worker_name, lease=self.lease)
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
            res.enqueuer.publish(
                [JobMessage(job_id, job_type.name, job_type.queue, CLAIM_RETRY_MS)]
            )
            return
        if job is None:
            logger.info("job %s is not due to run (finished, cancelled or taken); skipped", job_id)
            return
        res.notifier.publish(job_id, JobStatus.RUNNING)
        limit = job_type.time_limit.total_seconds() if job_type.time_limit else None
        running = RunningJob(
            job_id_=job_id,
            attempt=job.attempts,
            thread_id=threading.get_ident(),
            deadline=time.monotonic() + limit if limit else None,
            db=res.db,
            notifier=res.notifier,
            max_retries=job.max_retries,
            worker_losses=job.worker_losses,
            time_limit=limit,
        )
        with self._running_lock:
            self._running[job_id] = running
        try:
            self._execute(job_type, running, job.payload)
        finally:
            with self._running_lock:  # a later attempt of the same job may have replaced it
                if self._running.get(job_id) is running:
                    del self._running[job_id]

    def _execute(self, job_type: JobType, running: RunningJob, payload: dict[str, Any]) -> None:
        job_id, attempt = running.job_id_, running.attempt
        try:
            validated = job_type.payload.model_validate(payload)
            with running.user_code():
                result = job_type.run(validated, running)
        except JobCancelledError:
            if running.stop_reason is JobCancelledError:
                self._finish(
                    job_id,
                    attempt,
                    JobStatus.CANCELLED,
                    error={"type": "Cancelled", "message": "cancelled while running"},
                )
            return
        except JobTimeLimitError:
            error = {
                "type": "TimeLimitExceeded",
                "message": f"time limit of {running.time_limit:g}s exceeded",
            }
            self._failed_attempt(job_type, running, error, retryable=True)
        except (ValidationError, PermanentJobError) as exc:
            # A payload the job type no longer accepts, or an error the job itself calls
            # permanent: retrying cannot help.
            self._failed_attempt(job_type, running, _error(exc), retryable=False)
        except Exception as exc:
            self._failed_attempt(job_type, running, _error(exc), retryable=True)
        else:
            try:
                value = to_jsonable_python(result)
                if "\\u0000" in json.dumps(value, allow_nan=False):
                    raise ValueError("it contains a NUL character, which no database column stores")
            except (PydanticSerializationError, ValueError, TypeError) as exc:
                error = {
                    "type": "UnserializableResult",
                    "message": f"the result is not JSON: {exc}",
                }
                self._failed_attempt(job_type, running, error, retryable=False)
            else:
                self._finish(job_id, attempt, JobStatus.SUCCEEDED, result=value)

    def _failed_attempt(
        self,
        job_type: JobType,
        running: RunningJob,
        error: dict[str, Any],
        *,
        retryable: bool,
    ) -> None:
        res = self.resources
        job_id, attempt = running.job_id_, running.attempt
        failures = attempt - running.worker_losses  # attempts lost with a worker do not count
        if retryable and failures <= running.max_retries:
            delay = job_type.retry.backoff(failures)
            next_at = utcnow() + delay
            outcome = _recorded(
                runs.retry_later, res.db, job_id, attempt, error=error, next_attempt_at=next_at
            )
            if outcome is not JobStatus.RETRYING:
                if outcome is not None:
                    res.notifier.publish(job_id, outcome)
                return
            logger.info(
                "job %s attempt %d failed (%s); retry in %.1fs",
                job_id,
                attempt,
                error["message"],
                delay.total_seconds(),
            )
            res.notifier.publish(job_id, JobStatus.RETRYING)
            message = JobMessage(
                job_id, job_type.name, job_type.queue, int(delay.total_seconds() * 1000)
            )
            try:
                res.enqueuer.publish([message])
            except Exception:  # the sweeper publishes it: the row says retrying, unpublished
                logger.warning("could not publish the retry of job %s", job_id, exc_info=True)
            else:
                with transaction(res.db) as session:
                    mark_published(session, [job_id])
            return
        logger.error(
            "job %s failed for good after %d attempt(s): %s", job_id, attempt, error["message"]
        )
        if self._finish(job_id, attempt, JobStatus.FAILED, error=error):
            message_proxy = CurrentMessage.get_current_message()
            if message_proxy is not None:
                message_proxy.fail()  # type: ignore[attr-defined]  # nack: the message goes to the dead-letter queue

    def _finish(self, job_id: uuid.UUID, attempt: int, status: JobStatus, **kwargs: Any) -> bool:
        res = self.resources
        if not _recorded(runs.finish, res.db, job_id, attempt, status, **kwargs):
            logger.warning(
                "job %s attempt %d no longer holds the job; %s not recorded",
                job_id,
                attempt,
                status,
            )
            return False
        res.notifier.publish(job_id, status)
        return True


def _error(exc: BaseException) -> dict[str, Any]:
    message = str(exc).replace("\x00", "")[:2000]
    return {"type": type(exc).__name__, "message": message or type(exc).__name__}


T = TypeVar("T")


def _recorded(record: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Record an outcome, trying again while the database connection fails (a pooled
    connection found dead after a database restart, a short outage): the guarded UPDATE
    makes a repeat harmless, and giving up would leave the job to the reconciler, which
    runs it again."""
    for delay in RECORD_RETRY_DELAYS:
        try:
            return record(*args, **kwargs)
        except (OperationalError, InterfaceError, TransientError) as exc:
            logger.warning("could not record an outcome (%r); again in %.1fs", exc, delay)
            time.sleep(delay)
    return record(*args, **kwargs)


def install_lifecycle(
    broker: dramatiq.Broker,
    resources: Callable[[], Resources],
    *,
    lease_seconds: float,
    queues: set[str] | None = None,
) -> JobLifecycle:
    """Give `broker` the lifecycle middleware and an actor per job type (of `queues`)."""
    lifecycle = JobLifecycle(resources, lease=dt.timedelta(seconds=lease_seconds))
    bind_actors(broker, lifecycle, queues=queues)
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
