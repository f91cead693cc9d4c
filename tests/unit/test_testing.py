"""`conveyor.testing.FakeContext`: a job's ctx for unit tests of job functions."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import pytest

from conveyor.errors import InvalidRequestError, JobCancelledError, UnknownResourceError
from conveyor.registry import JobContext, Payload, Registry, job
from conveyor.testing import FakeContext, SubmittedChild
from tests import stack

REGISTRY = Registry()


class Count(Payload):
    steps: int = 3


class Notify(Payload):
    user_id: int


@job(queue="tests", name="tests.count", registry=REGISTRY)
def count(payload: Count, ctx: JobContext) -> dict[str, int]:
    for step in range(1, payload.steps + 1):
        ctx.sleep(0.5)
        ctx.progress(step / payload.steps, f"step {step}")
    return {"counted": payload.steps}


@job(queue="tests", name="tests.acount", registry=REGISTRY)
async def acount(payload: Count, ctx: JobContext) -> dict[str, Any]:
    for step in range(1, payload.steps + 1):
        await ctx.asleep(0.25)
        await ctx.aprogress(step / payload.steps)
    return {"counted": payload.steps, "loop": asyncio.get_running_loop() is not None}


@job(queue="tests", name="tests.notify", registry=REGISTRY)
def notify(payload: Notify) -> int:
    return payload.user_id


@job(queue="tests", name="tests.fan_out", registry=REGISTRY)
def fan_out(payload: Count, ctx: JobContext) -> list[str]:
    ids = [ctx.submit(notify, Notify(user_id=i), idempotency_key=f"n-{i}") for i in range(2)]
    ids.append(ctx.submit("tests.notify", {"user_id": 9}, delay=30))
    return [str(i) for i in ids]


# --- progress, sleep and cancellation -------------------------------------------------------


def test_progress_and_sleeps_are_recorded_and_the_result_returned() -> None:
    ctx = FakeContext()
    assert ctx.run(count, Count(steps=2)) == {"counted": 2}
    assert ctx.progress_reports == [(0.5, "step 1"), (1.0, "step 2")]
    assert ctx.slept == [0.5, 0.5]


def test_an_async_job_is_awaited_and_its_async_calls_recorded() -> None:
    ctx = FakeContext()
    assert ctx.run(acount, Count(steps=2)) == {"counted": 2, "loop": True}
    assert ctx.progress_reports == [(0.5, None), (1.0, None)]
    assert ctx.slept == [0.25, 0.25]


def test_a_job_without_ctx_runs_with_its_payload_only() -> None:
    assert FakeContext().run(notify, Notify(user_id=4)) == 4


def test_a_job_can_be_run_by_its_job_type() -> None:
    assert FakeContext().run(REGISTRY.get("tests.notify"), Notify(user_id=5)) == 5


def test_a_cancel_makes_the_next_progress_raise() -> None:
    ctx = FakeContext()
    ctx.progress(0.1)
    assert ctx.cancelled is False
    ctx.cancel()
    assert ctx.cancelled is True
    with pytest.raises(JobCancelledError):
        ctx.progress(0.2, "after the cancel")
    assert ctx.progress_reports == [(0.1, None), (0.2, "after the cancel")]


def test_a_cancel_makes_the_next_sleep_raise() -> None:
    ctx = FakeContext()
    ctx.cancel()
    with pytest.raises(JobCancelledError):
        ctx.sleep(10)


def test_a_job_cancelled_before_it_runs_stops_at_its_first_check() -> None:
    ctx = FakeContext()
    ctx.cancel()
    with pytest.raises(JobCancelledError):
        ctx.run(count, Count(steps=3))
    assert ctx.slept == [0.5]
    assert ctx.progress_reports == []


def test_an_async_job_sees_a_cancel_too() -> None:
    ctx = FakeContext(cancelled=True)
    with pytest.raises(JobCancelledError):
        ctx.run(acount, Count(steps=3))


# --- child jobs -----------------------------------------------------------------------------


def test_submitted_children_are_recorded_by_name_with_their_options() -> None:
    ctx = FakeContext(registry=REGISTRY)
    ids = ctx.run(fan_out, Count())
    assert [child.job_type for child in ctx.submitted] == ["tests.notify"] * 3
    assert [str(child.id) for child in ctx.submitted] == ids
    assert len(set(ids)) == 3
    assert ctx.submitted[0] == SubmittedChild(
        uuid.UUID(ids[0]), "tests.notify", {"user_id": 0}, "n-0", None, None
    )
    assert ctx.submitted[2].payload == {"user_id": 9}
    assert ctx.submitted[2].delay == 30


def test_the_same_key_gives_the_same_child_as_on_a_retry() -> None:
    ctx = FakeContext(registry=REGISTRY)
    first = ctx.run(fan_out, Count())
    retried = ctx.run(fan_out, Count())  # a second attempt submitting again
    assert retried[:2] == first[:2]  # keyed: the same children
    assert retried[2] != first[2]  # keyless: a new child each time
    assert len(ctx.submitted) == 4


def test_a_child_with_run_at_keeps_it() -> None:
    ctx = FakeContext(registry=REGISTRY)
    when = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    child_id = ctx.submit("tests.notify", {"user_id": 1}, run_at=when)
    assert ctx.submitted == [
        SubmittedChild(child_id, "tests.notify", {"user_id": 1}, None, when, None)
    ]


# --- what the context was given -------------------------------------------------------------


def test_given_resources_are_returned_and_unknown_ones_raise() -> None:
    mailer = object()
    ctx = FakeContext(resources={"mailer": mailer})
    assert ctx.resource("mailer") is mailer
    with pytest.raises(UnknownResourceError, match="'store'"):
        ctx.resource("store")


def test_settings_db_and_http_are_those_given_and_unset_ones_raise() -> None:
    ctx = FakeContext()
    for name in ("settings", "db", "http"):
        with pytest.raises(LookupError, match=f"given_{name}="):
            getattr(ctx, name)
    settings = stack.test_settings(database_url="sqlite://", broker_url="stub://")
    given = FakeContext(given_settings=settings, given_db="db", given_http="http")  # type: ignore[arg-type]
    assert given.settings is settings
    assert (given.db, given.http) == ("db", "http")


def test_ids_and_attempt_are_those_given() -> None:
    parent = uuid.uuid4()
    ctx = FakeContext(attempt=3, parent_id=parent)
    assert ctx.attempt == 3 and ctx.parent_id == parent
    assert isinstance(ctx.job_id, uuid.UUID) and isinstance(ctx.owner_id, uuid.UUID)
    assert FakeContext().job_id != ctx.job_id


def test_a_child_is_validated_as_the_real_submit_validates_it() -> None:
    ctx = FakeContext(registry=REGISTRY)
    with pytest.raises(InvalidRequestError) as unknown:
        ctx.submit("tests.nowhere", {})
    assert unknown.value.errors[0]["field"] == "type"
    with pytest.raises(InvalidRequestError) as invalid:
        ctx.submit(notify, {"user_id": "not a number"})
    assert invalid.value.errors[0]["field"] == "payload.user_id"
    ctx.submit(notify, {"user_id": 1}, idempotency_key="k")
    with pytest.raises(InvalidRequestError):  # the key belongs to the first request
        ctx.submit(notify, {"user_id": 2}, idempotency_key="k")
    assert len(ctx.submitted) == 1
