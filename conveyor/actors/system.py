"""Built-in diagnostic jobs of the `system` pool: echo, sleep and fail."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import ConfigDict, Field

from conveyor.registry import JobContext, Payload, job


class Echo(Payload):
    """Any JSON object; it comes back as the result."""

    model_config = ConfigDict(frozen=True, extra="allow")


class Sleep(Payload):
    seconds: float = Field(1.0, ge=0, le=3600, description="How long to sleep.")
    steps: int = Field(10, ge=1, le=1000, description="Progress reports along the way.")


class Fail(Payload):
    failures: int = Field(1, ge=0, le=100, description="Attempts that fail before one succeeds.")
    message: str = Field("planned failure", max_length=500)


@job(queue="system", max_retries=0, time_limit=dt.timedelta(minutes=1))
def echo(payload: Echo) -> dict[str, Any]:
    """Return the payload unchanged. Idempotent: it has no side effects."""
    return payload.model_dump(mode="json")


@job(queue="system", max_retries=0, time_limit=dt.timedelta(hours=1, minutes=1))
def sleep(payload: Sleep, ctx: JobContext) -> dict[str, Any]:
    """Sleep, reporting progress `steps` times; stops promptly when cancelled."""
    for step in range(1, payload.steps + 1):
        ctx.sleep(payload.seconds / payload.steps)
        ctx.progress(step / payload.steps, f"step {step} of {payload.steps}")
    return {"slept": payload.seconds}


#: Retries of `system.fail`: it runs at most one more time than this.
FAIL_RETRIES = 3


@job(
    queue="system",
    max_retries=FAIL_RETRIES,
    min_backoff=dt.timedelta(milliseconds=200),
    max_backoff=dt.timedelta(seconds=5),
)
def fail(payload: Fail, ctx: JobContext) -> dict[str, Any]:
    """Fail the first `failures` attempts, then succeed (exercises retries and dead letters)."""
    if ctx.attempt <= payload.failures:
        # The runs there will be: the failures and the one that succeeds, or, with more
        # failures than retries, every run its retries allow (all of them failing).
        runs = min(payload.failures, FAIL_RETRIES) + 1
        raise RuntimeError(f"{payload.message} (attempt {ctx.attempt} of {runs})")
    return {"attempts": ctx.attempt}
