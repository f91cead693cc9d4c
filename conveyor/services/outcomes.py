"""The outcome policy: what becomes of a job after an attempt, as one pure decision.

The worker layer runs the function and hands what happened (a result, an exception, a lost
worker) to these functions; they say whether the job succeeded, runs again (and when), fails
or ends cancelled. The retry rule is here and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from conveyor.db import storable_json
from conveyor.errors import (
    JobCancelledError,
    JobTimeLimitError,
    PermanentJobError,
    RetryLater,
)
from conveyor.models import JobStatus
from conveyor.registry import JobType

#: Longest error message kept on the job.
MAX_MESSAGE = 2000


@dataclass(frozen=True)
class Attempt:
    """What the policy needs to know about the attempt that just ended."""

    number: int  #: the job's `attempts` after this one began
    worker_losses: int  #: attempts that ended with their worker lost (not the job's fault)
    max_retries: int

    @property
    def failures(self) -> int:
        """Attempts that ended in the job's own failure, this one included."""
        return self.number - self.worker_losses

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
    rng: random.Random | None = None,
) -> Outcome:
    """The function raised `exc`: cancelled, retried after a delay, or failed.

    - a cancellation ends the job `cancelled`;
    - `PermanentJobError`, a payload that no longer validates, or an exception the job type
      lists as `permanent` fail it at once;
    - anything else (a time limit too) is retried while `attempt.may_retry`, after the
      backoff, or after the delay a `RetryLater` asks for (capped by `max_backoff`).
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
    if isinstance(exc, (PermanentJobError, ValidationError, *job_type.permanent)):
        return Outcome(JobStatus.FAILED, error=error, permanent=True)
    if not attempt.may_retry:
        return Outcome(JobStatus.FAILED, error=error)
    if isinstance(exc, RetryLater):
        delay = min(exc.delay, job_type.retry.max_backoff)
    else:
        delay = job_type.retry.backoff(attempt.failures, rng)
    return Outcome(JobStatus.RETRYING, error=error, retry_in=delay)


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
