"""The outcome policy on its own: what an attempt's result, exception or lost worker becomes."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import replace

import psycopg.errors
import pytest
import redis.exceptions
import sqlalchemy.exc
from pydantic import Field, ValidationError

from conveyor.errors import (
    InfrastructureError,
    JobCancelledError,
    JobTimeLimitError,
    OutboundHttpError,
    PermanentJobError,
    RetryLater,
)
from conveyor.models import JobStatus
from conveyor.registry import JobType, Payload, Registry, job
from conveyor.services import outcomes
from conveyor.services.outcomes import Attempt

REGISTRY = Registry()
MIN_BACKOFF = dt.timedelta(seconds=2)
MAX_BACKOFF = dt.timedelta(seconds=60)


class Numbers(Payload):
    n: int = Field(1, ge=0)


class QuotaExhaustedError(Exception):
    """A provider said no for good; this job type lists it as permanent."""


@job(
    queue="tests",
    name="tests.policy",
    max_retries=3,
    min_backoff=MIN_BACKOFF,
    max_backoff=MAX_BACKOFF,
    permanent=(QuotaExhaustedError, KeyError),
    registry=REGISTRY,
)
def policy(payload: Numbers) -> None:
    raise NotImplementedError  # never called: the policy only reads the declaration


@job(
    queue="tests",
    name="tests.short_backoff",
    max_retries=3,
    min_backoff=dt.timedelta(seconds=1),
    max_backoff=dt.timedelta(seconds=10),
    registry=REGISTRY,
)
def short_backoff(payload: Numbers) -> None:
    raise NotImplementedError


@job(
    queue="tests",
    name="tests.database_errors_are_permanent",
    permanent=(sqlalchemy.exc.OperationalError,),
    registry=REGISTRY,
)
def database_errors_are_permanent(payload: Numbers) -> None:
    raise NotImplementedError


POLICY = REGISTRY.get("tests.policy")
SHORT = REGISTRY.get("tests.short_backoff")
DB_PERMANENT = REGISTRY.get("tests.database_errors_are_permanent")


def attempt(number: int, *, losses: int = 0, max_retries: int = 3, max_losses: int = 2) -> Attempt:
    return Attempt(
        number=number, worker_losses=losses, max_retries=max_retries, max_worker_losses=max_losses
    )


def raised(
    exc: BaseException,
    at: Attempt,
    job_type: JobType = POLICY,
    infrastructure: tuple[type[BaseException], ...] = (),
) -> outcomes.Outcome:
    return outcomes.raised(job_type, at, exc, infrastructure=infrastructure, rng=random.Random(7))


def dead_database() -> sqlalchemy.exc.OperationalError:
    """What a pooled connection raises after a database restart."""
    return sqlalchemy.exc.OperationalError(
        "UPDATE jobs SET progress = 0.5",
        {},
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        connection_invalidated=True,
    )


class BrokerDownError(Exception):
    """Stands for the broker library's connection error, which the caller names."""


def validation_error() -> ValidationError:
    try:
        Numbers.model_validate({"n": -1})
    except ValidationError as exc:
        return exc
    raise AssertionError("the payload validated")


# --- returned ------------------------------------------------------------------------------


def test_a_returned_value_succeeds_with_its_json_form() -> None:
    outcome = outcomes.returned({"when": dt.date(2030, 1, 2), "items": (1, 2)})
    assert outcome.status == JobStatus.SUCCEEDED
    assert outcome.result == {"when": "2030-01-02", "items": [1, 2]}
    assert (outcome.error, outcome.retry_in, outcome.permanent) == (None, None, False)


def test_a_returned_none_succeeds_without_a_result() -> None:
    outcome = outcomes.returned(None)
    assert (outcome.status, outcome.result) == (JobStatus.SUCCEEDED, None)


@pytest.mark.parametrize(
    "value",
    [object(), {"x": float("nan")}, [float("inf")], {"text": "a\x00b"}],
    ids=["object", "nan", "infinity", "nul"],
)
def test_a_result_that_cannot_be_stored_fails_for_good(value: object) -> None:
    outcome = outcomes.returned(value)
    assert outcome.status == JobStatus.FAILED
    assert outcome.permanent is True
    assert outcome.error is not None and outcome.error["type"] == "UnserializableResult"
    assert outcome.retry_in is None


def test_a_result_with_a_backslash_followed_by_u0000_text_succeeds() -> None:
    text = "C:\\u0000\\dir"  # six characters \u0000, no NUL character
    assert "\x00" not in text
    outcome = outcomes.returned({"path": text})
    assert (outcome.status, outcome.result) == (JobStatus.SUCCEEDED, {"path": text})


# --- raised: retries and backoff ------------------------------------------------------------


@pytest.mark.parametrize("number", [1, 2, 3])
def test_a_failure_is_retried_while_failures_do_not_exceed_max_retries(number: int) -> None:
    outcome = raised(RuntimeError("boom"), attempt(number))
    assert outcome.status == JobStatus.RETRYING
    assert outcome.error == {"type": "RuntimeError", "message": "boom"}
    assert outcome.permanent is False


def test_the_failure_past_the_last_retry_fails_the_job() -> None:
    outcome = raised(RuntimeError("boom"), attempt(4))  # the first attempt and three retries
    assert outcome.status == JobStatus.FAILED
    assert outcome.error == {"type": "RuntimeError", "message": "boom"}
    assert outcome.retry_in is None
    assert outcome.permanent is False  # it ran out of retries; retrying might have helped


def test_a_job_without_retries_fails_on_its_first_failure() -> None:
    outcome = raised(RuntimeError("boom"), attempt(1, max_retries=0))
    assert outcome.status == JobStatus.FAILED


@pytest.mark.parametrize(
    ("number", "ceiling"),
    [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)],
)
def test_the_backoff_doubles_with_each_failure_within_equal_jitter(
    number: int, ceiling: float
) -> None:
    for seed in range(20):
        outcome = outcomes.raised(
            POLICY, attempt(number, max_retries=10), RuntimeError("x"), rng=random.Random(seed)
        )
        assert outcome.retry_in is not None
        assert ceiling / 2 <= outcome.retry_in.total_seconds() <= ceiling


def test_the_backoff_is_capped_by_max_backoff() -> None:
    outcome = raised(RuntimeError("x"), attempt(30, max_retries=40))
    assert outcome.retry_in is not None
    assert MAX_BACKOFF / 2 <= outcome.retry_in <= MAX_BACKOFF


def test_lost_workers_do_not_count_as_failures() -> None:
    at = attempt(5, losses=2, max_retries=3)  # five attempts, two of them lost: three failures
    assert at.failures == 3
    assert at.may_retry is True
    outcome = raised(RuntimeError("boom"), at)
    assert outcome.status == JobStatus.RETRYING
    # The backoff follows the job's own failures (the 3rd: 8 s), not the attempts (32 s).
    assert outcome.retry_in is not None and outcome.retry_in <= dt.timedelta(seconds=8)
    spent = attempt(6, losses=2, max_retries=3)
    assert (spent.failures, spent.may_retry) == (4, False)
    assert raised(RuntimeError("boom"), spent).status == JobStatus.FAILED


def test_an_error_message_is_cut_and_loses_nul_characters() -> None:
    outcome = raised(RuntimeError("a\x00b" + "x" * 5000), attempt(1))
    assert outcome.error is not None
    assert outcome.error["message"].startswith("abx")
    assert len(outcome.error["message"]) == outcomes.MAX_MESSAGE


def test_an_exception_without_a_message_is_named_by_its_class() -> None:
    outcome = raised(OutboundHttpError(""), attempt(1))
    assert outcome.error is not None
    assert outcome.error["type"] == "OutboundHttpError"
    assert outcome.error["message"]  # the class docstring, never empty


# --- RetryLater -----------------------------------------------------------------------------


def test_retry_later_runs_again_after_the_delay_it_asks_for() -> None:
    outcome = raised(RetryLater(30), attempt(1))
    assert outcome.status == JobStatus.RETRYING
    assert outcome.retry_in == dt.timedelta(seconds=30)
    assert outcome.error is not None and outcome.error["type"] == "RetryLater"


def test_retry_later_accepts_a_timedelta() -> None:
    outcome = raised(RetryLater(dt.timedelta(seconds=45)), attempt(2))
    assert outcome.retry_in == dt.timedelta(seconds=45)


def test_retry_later_is_capped_by_max_backoff() -> None:
    assert raised(RetryLater(30), attempt(1), SHORT).retry_in == dt.timedelta(seconds=10)
    assert raised(RetryLater(float("inf")), attempt(1)).retry_in == MAX_BACKOFF


def test_a_negative_or_nan_retry_later_delay_means_at_once() -> None:
    assert raised(RetryLater(-5), attempt(1)).retry_in == dt.timedelta(0)
    assert raised(RetryLater(float("nan")), attempt(1)).retry_in == dt.timedelta(0)


def test_retry_later_still_fails_once_the_retries_are_spent() -> None:
    outcome = raised(RetryLater(30), attempt(3))
    assert outcome.status == JobStatus.RETRYING
    spent = raised(RetryLater(30), attempt(4))
    assert spent.status == JobStatus.FAILED
    assert spent.retry_in is None
    assert spent.error is not None and spent.error["type"] == "RetryLater"


def test_a_deferring_retry_later_uses_up_no_retry_until_the_deferrals_are_spent() -> None:
    spent = Attempt(number=10, worker_losses=0, max_retries=3, max_worker_losses=2, handbacks=5)
    outcome = raised(RetryLater(30, deferred=True), spent)  # 5 failures: past max_retries
    assert (outcome.status, outcome.deferred) == (JobStatus.RETRYING, True)
    assert outcome.retry_in == dt.timedelta(seconds=30)
    assert raised(RetryLater(30), spent).status == JobStatus.FAILED  # a provider's: it counts
    many = replace(spent, number=200, handbacks=outcomes.MAX_DEFERRALS)
    over = raised(RetryLater(30, deferred=True), many)
    assert (over.status, over.deferred) == (JobStatus.FAILED, False)


# --- permanent failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        QuotaExhaustedError("no quota left"),
        KeyError("missing"),
        PermanentJobError("cannot work"),
        validation_error(),
    ],
    ids=["declared", "declared-builtin", "PermanentJobError", "ValidationError"],
)
def test_permanent_errors_fail_at_once_with_retries_left(exc: BaseException) -> None:
    outcome = raised(exc, attempt(1))
    assert outcome.status == JobStatus.FAILED
    assert outcome.permanent is True
    assert outcome.retry_in is None
    assert outcome.error is not None and outcome.error["type"] == type(exc).__name__


def test_a_subclass_of_a_permanent_class_is_permanent_too() -> None:
    class DailyQuotaExhaustedError(QuotaExhaustedError):
        pass

    outcome = raised(DailyQuotaExhaustedError("today"), attempt(1))
    assert (outcome.status, outcome.permanent) == (JobStatus.FAILED, True)


def test_a_class_another_job_type_lists_as_permanent_is_retried_here() -> None:
    outcome = raised(QuotaExhaustedError("no quota left"), attempt(1), SHORT)
    assert (outcome.status, outcome.permanent) == (JobStatus.RETRYING, False)


# --- cancellation and time limits -----------------------------------------------------------


@pytest.mark.parametrize("number", [1, 4])
def test_a_cancellation_ends_the_job_cancelled(number: int) -> None:
    outcome = raised(JobCancelledError(), attempt(number))
    assert outcome.status == JobStatus.CANCELLED
    assert outcome.error == {"type": "Cancelled", "message": "cancelled while running"}
    assert outcome.retry_in is None


def test_a_time_limit_is_retried_like_any_failure() -> None:
    outcome = outcomes.raised(POLICY, attempt(1), JobTimeLimitError(), time_limit=0.5)
    assert outcome.status == JobStatus.RETRYING
    assert outcome.error == {"type": "TimeLimitExceeded", "message": "time limit of 0.5s exceeded"}
    assert outcome.retry_in is not None and outcome.retry_in > dt.timedelta(0)


def test_a_time_limit_on_the_last_attempt_fails_the_job() -> None:
    outcome = outcomes.raised(POLICY, attempt(4), JobTimeLimitError(), time_limit=600)
    assert outcome.status == JobStatus.FAILED
    assert outcome.error == {"type": "TimeLimitExceeded", "message": "time limit of 600s exceeded"}
    assert outcome.permanent is False


def test_a_time_limit_without_a_known_limit_says_so_plainly() -> None:
    outcome = outcomes.raised(POLICY, attempt(1), JobTimeLimitError())
    assert outcome.error == {"type": "TimeLimitExceeded", "message": "time limit exceeded"}


# --- lost workers ---------------------------------------------------------------------------


def test_a_lost_worker_runs_the_job_again_at_once() -> None:
    outcome = outcomes.lost_worker(3, 0, cancel_requested=False, max_worker_losses=2)
    assert outcome.status == JobStatus.RETRYING
    assert outcome.retry_in == dt.timedelta(0)
    assert outcome.error is not None and outcome.error["type"] == "WorkerLost"
    assert "attempt 3" in outcome.error["message"]


def test_a_lost_worker_of_a_job_asked_to_cancel_ends_it_cancelled() -> None:
    outcome = outcomes.lost_worker(1, 0, cancel_requested=True, max_worker_losses=2)
    assert outcome.status == JobStatus.CANCELLED
    assert outcome.error is not None and outcome.error["type"] == "WorkerLost"


def test_a_job_that_lost_too_many_workers_fails() -> None:
    assert (
        outcomes.lost_worker(2, 1, cancel_requested=False, max_worker_losses=2).status
        == JobStatus.RETRYING
    )
    outcome = outcomes.lost_worker(3, 2, cancel_requested=False, max_worker_losses=2)
    assert outcome.status == JobStatus.FAILED
    assert outcome.error is not None
    assert outcome.error["message"].endswith("(3 workers lost running this job)")


def test_with_no_worker_losses_allowed_the_first_loss_fails_the_job() -> None:
    outcome = outcomes.lost_worker(1, 0, cancel_requested=False, max_worker_losses=0)
    assert outcome.status == JobStatus.FAILED


# --- infrastructure failures ----------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        dead_database(),
        InfrastructureError("database unavailable: connection refused"),
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
    ],
    ids=["database", "direct-connection", "redis"],
)
def test_an_infrastructure_error_runs_the_job_again_without_using_a_retry(
    exc: BaseException,
) -> None:
    outcome = raised(exc, attempt(4))  # the job's retries are all spent: 4 = 1 + 3
    assert outcome.status == JobStatus.RETRYING
    assert outcome.interrupted is True
    assert outcome.error is not None and outcome.error["type"] == type(exc).__name__
    assert MIN_BACKOFF / 2 <= (outcome.retry_in or dt.timedelta(0)) <= MIN_BACKOFF


def test_the_delay_after_an_infrastructure_error_grows_with_the_runs_cut_short() -> None:
    first = raised(dead_database(), attempt(1, losses=0, max_losses=5)).retry_in
    third = raised(dead_database(), attempt(3, losses=2, max_losses=5)).retry_in
    assert first is not None and first <= MIN_BACKOFF
    assert third is not None and third >= 2 * MIN_BACKOFF


def test_a_job_that_keeps_meeting_a_dead_service_fails_once_its_worker_losses_are_spent() -> None:
    outcome = raised(dead_database(), attempt(3, losses=2, max_losses=2))
    assert outcome.status == JobStatus.FAILED
    assert outcome.interrupted is True
    assert outcome.permanent is False
    assert outcome.error is not None and outcome.error["type"] == "OperationalError"
    assert "3 runs cut short" in outcome.error["message"]
    assert raised(dead_database(), attempt(1, max_losses=0)).status == JobStatus.FAILED


def test_the_broker_errors_the_caller_names_are_infrastructure_errors() -> None:
    named = raised(
        BrokerDownError("connection closed"), attempt(1), infrastructure=(BrokerDownError,)
    )
    assert (named.status, named.interrupted) == (JobStatus.RETRYING, True)
    unnamed = raised(BrokerDownError("connection closed"), attempt(1))
    assert (unnamed.status, unnamed.interrupted) == (JobStatus.RETRYING, False)


def test_a_statements_own_database_error_is_the_jobs_failure() -> None:
    unique = sqlalchemy.exc.IntegrityError(
        "INSERT INTO reports", {}, psycopg.errors.UniqueViolation("duplicate key value")
    )
    outcome = raised(unique, attempt(4))
    assert (outcome.status, outcome.interrupted) == (JobStatus.FAILED, False)


def test_a_database_error_the_job_type_declares_permanent_stays_permanent() -> None:
    declared = raised(dead_database(), attempt(1), DB_PERMANENT)
    assert (declared.status, declared.permanent) == (JobStatus.FAILED, True)
