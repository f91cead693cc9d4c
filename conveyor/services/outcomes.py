"""The outcome policy: what becomes of a job after an attempt, as one pure decision.

The worker layer runs the function and hands what happened (a result, an exception, a lost
worker) to these functions; they say whether the job succeeded, runs again (and when), fails
or ends cancelled. The retry rule is here and nowhere else.

Two budgets: `max_retries` bounds the job's own failures; `max_worker_losses` bounds the runs
cut short by something else (a worker that died, or a database, broker or Redis that failed
under the job). The second kind never uses up the first. A run handed back by a worker that
was told to stop (`runs.hand_back`) uses up neither.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from conveyor.db import storable_json
from conveyor.errors import (
    JobCancelledError,
    JobTimeLimitError,
    PermanentJobError,
    RetryLater,
    is_infrastructure_error,
)
from conveyor.models import JobStatus
from conveyor.registry import JobType

#: Longest error message kept on the job.
MAX_MESSAGE = 2000
#: How many hand-backs (a stopping worker's, or a deferring `RetryLater`) a job may have and
#: still be deferred without using up a retry: past it, a deferral counts as a failure, so a
#: job deferred for ever still ends.
MAX_DEFERRALS = 100


@dataclass(frozen=True)
class Attempt:
    """What the policy needs to know about the attempt that just ended."""

    number: int  #: the job's `attempts` after this one began
    worker_losses: int  #: earlier attempts cut short by a lost worker or infrastructure
    max_retries: int
    max_worker_losses: int  #: the setting: how many of those a job may have and go on
    handbacks: int = 0  #: earlier attempts handed back unfinished by a stopping worker

    @property
    def failures(self) -> int:
        """Attempts that ended in the job's own failure, this one included."""
        return self.number - self.worker_losses - self.handbacks

    @property
    def may_retry(self) -> bool:
        """The retry rule: a job runs again while its failures do not exceed its retries."""
        return self.failures <= self.max_retries


@dataclass(frozen=True)
class Outcome:
    """The decision: the job's next status, with its result, error or retry delay."""

    status: JobStatus
    result: Any = None
    #: `result` as the JSON text that was checked storable (so it is not encoded twice).
    result_json: str | None = None
    error: dict[str, Any] | None = None
    retry_in: dt.timedelta | None = None
    #: Failed because retrying could not help (not because the retries ran out).
    permanent: bool = False
    #: Infrastructure cut the attempt short: it counts in `worker_losses`, not as a failure.
    interrupted: bool = False
    #: A `RetryLater(deferred=True)`: not a failure, counted in `handbacks`.
    deferred: bool = False
    #: What the function raised, for the worker's log (never stored: `error` is).
    exception: BaseException | None = field(default=None, compare=False, repr=False)


def error_of(exc: BaseException) -> dict[str, Any]:
    """The `error` stored on a job: the exception's class and message."""
    message = str(exc).replace("\x00", "")[:MAX_MESSAGE]
    name = type(exc).__name__
    return {"type": name, "message": message or name}


def returned(value: Any) -> Outcome:
    """The function returned `value`: succeeded, unless the value cannot be stored as JSON."""
    try:
        result = to_jsonable_python(value)
        text = storable_json(result)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        error = {"type": "UnserializableResult", "message": f"the result is not JSON: {exc}"}
        return Outcome(JobStatus.FAILED, error=error, permanent=True)
    return Outcome(JobStatus.SUCCEEDED, result=result, result_json=text)


def raised(
    job_type: JobType,
    attempt: Attempt,
    exc: BaseException,
    *,
    time_limit: float | None = None,
    infrastructure: tuple[type[BaseException], ...] = (),
    traceback: str | None = None,
    rng: random.Random | None = None,
) -> Outcome:
    """The function raised `exc`: cancelled, retried after a delay, or failed. `traceback`,
    if given, is stored with the error (as `error.traceback`), but not for a cancellation.

    - a cancellation ends the job `cancelled`;
    - `PermanentJobError`, a payload that no longer validates, or an exception the job type
      lists as `permanent` fail it at once;
    - an infrastructure error (`errors.is_infrastructure_error`, or one of `infrastructure`:
      the broker's, which the caller names) is not the job's failure: see `interrupted`;
    - anything else (a time limit too) is retried while `attempt.may_retry`, after the
      backoff, or after the delay a `RetryLater` asks for (capped by `max_backoff`);
    - a `RetryLater(deferred=True)` runs again after its delay without using up a retry (a
      hand-back), while the job has had fewer than `MAX_DEFERRALS` hand-backs.
    """
    if isinstance(exc, JobCancelledError):
        return Outcome(
            JobStatus.CANCELLED, error={"type": "Cancelled", "message": "cancelled while running"}
        )
    if isinstance(exc, JobTimeLimitError):
        limit = f" of {time_limit:g}s" if time_limit is not None else ""
        error = {"type": "TimeLimitExceeded", "message": f"time limit{limit} exceeded"}
    else:
        error = error_of(exc)
    if traceback:
        error["traceback"] = traceback
    if isinstance(exc, (PermanentJobError, ValidationError, *job_type.permanent)):
        return Outcome(JobStatus.FAILED, error=error, permanent=True, exception=exc)
    if is_infrastructure_error(exc) or isinstance(exc, infrastructure):
        return replace(interrupted(job_type, attempt, error, rng=rng), exception=exc)
    if isinstance(exc, RetryLater) and exc.deferred and attempt.handbacks < MAX_DEFERRALS:
        delay = min(exc.delay, job_type.retry.max_backoff)
        return Outcome(
            JobStatus.RETRYING, error=error, retry_in=delay, deferred=True, exception=exc
        )
    if not attempt.may_retry:
        return Outcome(JobStatus.FAILED, error=error, exception=exc)
    if isinstance(exc, RetryLater):
        delay = min(exc.delay, job_type.retry.max_backoff)
    else:
        delay = job_type.retry.backoff(attempt.failures, rng)
    return Outcome(JobStatus.RETRYING, error=error, retry_in=delay, exception=exc)


def interrupted(
    job_type: JobType,
    attempt: Attempt,
    error: dict[str, Any],
    *,
    rng: random.Random | None = None,
) -> Outcome:
    """A database, broker or Redis failure reached the job's code and ended the attempt.

    Counted like a lost worker, not against the retries: the job runs again after the job
    type's backoff for its count of such runs, unless it already had `max_worker_losses` of
    them (a job that always meets a dead service must end), and then it fails.
    """
    if attempt.worker_losses >= attempt.max_worker_losses:
        losses = attempt.worker_losses + 1
        message = f"{error['message']} ({losses} runs cut short by lost workers or services)"
        return Outcome(JobStatus.FAILED, error={**error, "message": message}, interrupted=True)
    delay = job_type.retry.backoff(attempt.worker_losses + 1, rng)
    return Outcome(JobStatus.RETRYING, error=error, retry_in=delay, interrupted=True)


def lost_worker(
    attempts: int, worker_losses: int, *, cancel_requested: bool, max_worker_losses: int
) -> Outcome:
    """The attempt's worker stopped renewing its lease (it died or froze).

    A lost worker is not the job's failure, so its retries are untouched: it runs again at
    once, unless a cancel was asked for, or it already lost `max_worker_losses` workers (a job
    that kills its worker every time must stop).
    """
    error = {
        "type": "WorkerLost",
        "message": f"the worker of attempt {attempts} stopped without finishing it",
    }
    if cancel_requested:
        return Outcome(JobStatus.CANCELLED, error=error)
    if worker_losses >= max_worker_losses:
        error["message"] += f" ({worker_losses + 1} workers lost running this job)"
        return Outcome(JobStatus.FAILED, error=error)
    return Outcome(JobStatus.RETRYING, error=error, retry_in=dt.timedelta(0))
