"""Job types that exist only in tests (time limits, a job that ignores cancellation, child
jobs, planned retries, permanent errors, outbound HTTP from an async job, a job that queries
the database itself, a job that fails once without retrying, a job with a field of each
simple type for the generated form)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from pydantic import Field
from sqlalchemy import text

from conveyor.errors import RetryLater
from conveyor.registry import JOBS, JobContext, Payload, job


class Busy(Payload):
    seconds: float = 30.0


class Spawn(Payload):
    """Submit a `system.echo` child of payload `{"n": n}`; fail the first attempt if asked."""

    n: int = 1
    key: str | None = None
    fail_first: bool = False


class Wait(Payload):
    seconds: float = 30.0


class Decline(Payload):
    card: str = "4000-0000-0000-0002"


class Fetch(Payload):
    url: str


class CardDeclinedError(Exception):
    """Retrying cannot help; `testing.decline` lists it as permanent."""


if "testing.busy" not in JOBS:

    @job(
        queue="system",
        name="testing.busy",
        max_retries=0,
        time_limit=dt.timedelta(milliseconds=500),
    )
    def busy(payload: Busy) -> None:
        """Keep the thread busy in Python code, never checking for cancellation."""
        deadline = time.monotonic() + payload.seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)


if "testing.spawn" not in JOBS:

    @job(
        queue="system",
        name="testing.spawn",
        max_retries=2,
        min_backoff=dt.timedelta(milliseconds=200),
        max_backoff=dt.timedelta(seconds=1),
    )
    def spawn(payload: Spawn, ctx: JobContext) -> dict[str, Any]:
        """Submit one child with `ctx.submit`, then fail the first attempt if asked."""
        child = ctx.submit("system.echo", {"n": payload.n}, idempotency_key=payload.key)
        if payload.fail_first and ctx.attempt == 1:
            raise RuntimeError("failed after submitting the child")
        return {"child": str(child), "attempt": ctx.attempt}


if "testing.wait_and_retry" not in JOBS:

    @job(queue="system", name="testing.wait_and_retry", max_retries=1)
    def wait_and_retry(payload: Wait) -> None:
        """Ask to run again after `seconds` (as a provider's Retry-After would)."""
        raise RetryLater(payload.seconds)


if "testing.retry_once" not in JOBS:

    @job(queue="system", name="testing.retry_once", max_retries=1)
    def retry_once(payload: Wait, ctx: JobContext) -> dict[str, Any]:
        """Ask to run again after `seconds` on the first attempt; succeed on the next."""
        if ctx.attempt == 1:
            raise RetryLater(payload.seconds)
        return {"attempt": ctx.attempt}


if "testing.decline" not in JOBS:

    @job(queue="system", name="testing.decline", max_retries=5, permanent=(CardDeclinedError,))
    def decline(payload: Decline) -> None:
        """Fail with an exception the type declares permanent."""
        raise CardDeclinedError(f"card {payload.card} declined")


if "testing.fetch" not in JOBS:

    @job(queue="system", name="testing.fetch", max_retries=0)
    async def fetch(payload: Fetch, ctx: JobContext) -> dict[str, Any]:
        """GET `url` with the shared client from an async job."""
        response = await ctx.http.arequest("GET", payload.url)
        return {"status": response.status, "bytes": len(response.body)}


class Query(Payload):
    seconds: float = 3.0
    steps: int = 30


if "testing.query" not in JOBS:

    @job(queue="system", name="testing.query", max_retries=0)
    def query(payload: Query, ctx: JobContext) -> dict[str, Any]:
        """Query the database at every step in one session held across the steps (so a
        database restart meets it), reporting progress; no retries."""
        with ctx.db() as session:
            for step in range(1, payload.steps + 1):
                session.execute(text("SELECT 1"))
                ctx.sleep(payload.seconds / payload.steps)
                ctx.progress(step / payload.steps)
        return {"attempt": ctx.attempt}


class Explode(Payload):
    message: str = "boom"
    repeat: int = 1


def _explode_here(message: str) -> None:
    raise ValueError(message)


if "testing.explode" not in JOBS:

    @job(
        queue="system",
        name="testing.explode",
        max_retries=1,
        min_backoff=dt.timedelta(milliseconds=100),
        max_backoff=dt.timedelta(milliseconds=200),
    )
    def explode(payload: Explode) -> None:
        """Fail every attempt with a ValueError raised in a helper (`message`, `repeat` times)."""
        try:
            _explode_here(payload.message * payload.repeat)
        except ValueError as exc:
            raise RuntimeError("the helper failed") from exc


if "testing.async_explode" not in JOBS:

    @job(queue="system", name="testing.async_explode", max_retries=0)
    async def async_explode(payload: Explode) -> None:
        """Fail at once in an `async def` job."""
        _explode_here(payload.message)


if "testing.async_busy" not in JOBS:

    @job(
        queue="system",
        name="testing.async_busy",
        max_retries=0,
        time_limit=dt.timedelta(milliseconds=500),
    )
    async def async_busy(payload: Busy) -> None:
        """Wait past the time limit in an `async def` job."""
        await asyncio.sleep(payload.seconds)


class Flaky(Payload):
    message: str = "the service was away"


if "testing.fail_first" not in JOBS:

    @job(queue="system", name="testing.fail_first", max_retries=0)
    def fail_first(payload: Flaky, ctx: JobContext) -> dict[str, Any]:
        """Fail the first attempt for good (no retries), succeed on the next: a job that a
        person's retry fixes."""
        if ctx.attempt == 1:
            raise ConnectionError(payload.message)
        return {"attempt": ctx.attempt}


class Compose(Payload):
    title: str = Field(min_length=3, max_length=40, description="What the document is called.")
    pages: int = Field(3, ge=1, le=20, description="How many pages to write.")
    draft: bool = Field(False, description="Mark it as a draft.")


if "testing.compose" not in JOBS:

    @job(queue="system", name="testing.compose", max_retries=0)
    def compose(payload: Compose, ctx: JobContext) -> dict[str, Any]:
        """Write the pages a little apart, reporting progress after each."""
        for page in range(1, payload.pages + 1):
            ctx.sleep(0.3)
            ctx.progress(page / payload.pages, f"page {page} of {payload.pages}")
        return {"title": payload.title, "pages": payload.pages, "draft": payload.draft}
