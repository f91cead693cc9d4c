"""The built-in system jobs, run with a fake context."""

from __future__ import annotations

import pytest

from conveyor.actors import system
from conveyor.registry import JOB_TYPE_ATTRIBUTE
from conveyor.testing import FakeContext


@pytest.mark.parametrize(
    ("failures", "attempt", "runs"),
    [
        (1, 1, 2),  # fails once, then succeeds: 2 runs
        (2, 2, 3),
        (3, 3, 4),
        (4, 4, 4),  # more failures than retries: the 4 runs allowed all fail
        (5, 4, 4),
        (100, 1, 4),
    ],
)
def test_fail_states_how_many_attempts_will_really_run(
    failures: int, attempt: int, runs: int
) -> None:
    with pytest.raises(RuntimeError) as caught:
        FakeContext(attempt=attempt).run(system.fail, system.Fail(failures=failures))
    assert str(caught.value) == f"planned failure (attempt {attempt} of {runs})"


def test_fail_allows_as_many_runs_as_its_job_type_retries() -> None:
    retries = getattr(system.fail, JOB_TYPE_ATTRIBUTE).retry.max_retries
    with pytest.raises(RuntimeError, match=f"of {retries + 1}\\)"):
        FakeContext(attempt=retries + 1).run(system.fail, system.Fail(failures=retries + 5))


def test_fail_succeeds_once_its_failures_are_spent() -> None:
    assert FakeContext(attempt=3).run(system.fail, system.Fail(failures=2)) == {"attempts": 3}
