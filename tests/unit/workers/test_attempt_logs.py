"""The worker's log of an attempt: one INFO line when it starts, one when it ends (WARNING
with the traceback for a retry, ERROR for a job failed for good), with fields."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import logs
from conveyor.models import Job
from conveyor.registry import job
from conveyor.workers.lifecycle import JobLifecycle
from tests.unit.workers.test_lifecycle import (  # noqa: F401  (fixtures)
    REGISTRY,
    Numbers,
    lifecycle,
    make,
    run,
)

LOGGER = "conveyor.workers.lifecycle"


def _lines(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_an_attempt_that_succeeds_is_logged_when_it_starts_and_ends(
    lifecycle: JobLifecycle,  # noqa: F811
    make: Callable[..., Job],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    row = make("tests.double", n=2)
    run(lifecycle, row)
    start, end = _lines(caplog)
    assert start.levelno == end.levelno == logging.INFO
    assert start.getMessage() == f"job {row.id} (tests.double) attempt 1 started on queue tests"
    assert (start.job_type, start.attempt, start.queue) == ("tests.double", 1, "tests")
    assert (end.job_type, end.attempt, end.outcome) == ("tests.double", 1, "succeeded")
    assert end.duration_ms >= 0 and end.exc_info is None
    assert end.getMessage().startswith(f"job {row.id} (tests.double) attempt 1 succeeded after ")


def test_a_retry_is_a_warning_with_the_traceback_and_the_last_failure_an_error(
    lifecycle: JobLifecycle,  # noqa: F811
    make: Callable[..., Job],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    row = make("tests.broken", max_retries=1, n=7)
    run(lifecycle, row)
    _, retry = _lines(caplog)
    assert retry.levelno == logging.WARNING
    assert (retry.outcome, retry.error_type, retry.attempt) == ("retrying", "RuntimeError", 1)
    assert re.search(r" attempt 1 failed after [\d.]+s: broken 7; retry in ", retry.getMessage())
    assert retry.exc_info is not None and str(retry.exc_info[1]) == "broken 7"

    caplog.clear()
    row = make("tests.broken", max_retries=0, n=8)
    run(lifecycle, row)
    _, failed = _lines(caplog)
    assert failed.levelno == logging.ERROR
    assert failed.outcome == "failed"
    assert re.search(r" failed for good after [\d.]+s: broken 8$", failed.getMessage())
    assert failed.exc_info is not None


def test_a_permanent_failure_is_a_warning(
    lifecycle: JobLifecycle,  # noqa: F811
    make: Callable[..., Job],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    run(lifecycle, make("tests.permanent", max_retries=3))
    _, end = _lines(caplog)
    assert end.levelno == logging.WARNING
    assert (end.outcome, end.error_type) == ("failed", "PermanentJobError")
    assert re.search(r" failed permanently after [\d.]+s: this cannot work$", end.getMessage())


def test_a_payload_that_no_longer_validates_has_no_traceback_of_the_worker(
    lifecycle: JobLifecycle,  # noqa: F811
    make: Callable[..., Job],  # noqa: F811
    load: Callable[..., Job],
) -> None:
    row = make("tests.double", max_retries=3, n=-1)
    run(lifecycle, row)
    error = load(row.id).error
    assert error is not None and error["type"] == "ValidationError"
    assert "traceback" not in error  # nothing of the job's code ran: its message says it all


SEEN: list[str | None] = []


@job(queue="tests", name="tests.async_log_context", registry=REGISTRY)
async def async_log_context(payload: Numbers) -> None:
    SEEN.append(logs.job_id.get())


@job(queue="tests", name="tests.log_context", registry=REGISTRY)
def log_context(payload: Numbers) -> None:
    SEEN.append(logs.job_id.get())


@pytest.mark.parametrize("job_type", ["tests.log_context", "tests.async_log_context"])
def test_the_jobs_own_log_lines_carry_its_id(
    lifecycle: JobLifecycle,  # noqa: F811
    make: Callable[..., Job],  # noqa: F811
    job_type: str,
) -> None:
    SEEN.clear()
    row = make(job_type)
    run(lifecycle, row)
    assert SEEN == [str(row.id)]
    assert logs.job_id.get() is None
