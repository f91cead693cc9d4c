"""The job registry: declaration-time errors, lookups, retry backoff, payload models."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from conveyor import testing
from conveyor.errors import InvalidRequestError
from conveyor.registry import JOBS, JobContext, Payload, Registry, RetryPolicy, job


class Resize(Payload):
    width: int
    height: int = 10


class NotAPayload(BaseModel):
    width: int


JOB_ID = uuid.UUID("01a20d82-b593-714a-8417-eba5d27a552c")


def fake_ctx() -> testing.FakeContext:
    return testing.FakeContext(job_id=JOB_ID)


@pytest.fixture
def registry() -> Registry:
    return Registry()


# --- declaration ---------------------------------------------------------------------------


def test_a_declared_job_is_registered_with_its_options(registry: Registry) -> None:
    @job(
        queue="images",
        name="images.resize",
        max_retries=5,
        min_backoff=dt.timedelta(seconds=2),
        max_backoff=dt.timedelta(minutes=1),
        time_limit=dt.timedelta(seconds=30),
        registry=registry,
    )
    def resize(payload: Resize) -> dict[str, int]:
        """Resize an image.

        Longer notes that are not part of the description.
        """
        return {"area": payload.width * payload.height}

    job_type = registry.get("images.resize")
    assert job_type.payload is Resize
    assert job_type.queue == "images"
    assert job_type.retry == RetryPolicy(5, dt.timedelta(seconds=2), dt.timedelta(minutes=1))
    assert job_type.time_limit == dt.timedelta(seconds=30)
    assert job_type.description == "Resize an image."
    assert job_type.takes_context is False
    assert job_type.fn is resize
    assert "images.resize" in registry
    assert len(registry) == 1
    assert job_type.permanent == ()


def test_the_decorator_returns_the_function_unchanged(registry: Registry) -> None:
    def resize(payload: Resize) -> int:
        return payload.width

    assert job(queue="images", name="images.resize", registry=registry)(resize) is resize


def test_the_name_defaults_to_module_and_function(registry: Registry) -> None:
    @job(queue="images", registry=registry)
    def thumbnail(payload: Resize) -> None:
        pass

    assert [t.name for t in registry] == ["test_registry.thumbnail"]


def test_a_second_parameter_makes_the_job_take_a_context(registry: Registry) -> None:
    @job(queue="images", name="images.resize", registry=registry)
    def resize(payload: Resize, ctx: JobContext) -> str:
        return f"{ctx.job_id}:{ctx.attempt}:{payload.width}"

    job_type = registry.get("images.resize")
    assert job_type.takes_context is True
    assert fake_ctx().run(job_type, Resize(width=3)) == f"{JOB_ID}:1:3"


def test_a_time_limit_of_none_means_no_limit(registry: Registry) -> None:
    @job(queue="images", name="images.resize", time_limit=None, registry=registry)
    def resize(payload: Resize) -> None:
        pass

    assert registry.get("images.resize").time_limit is None


@pytest.mark.parametrize("annotation", ["unannotated", "dict", "basemodel", "int"])
def test_the_first_parameter_must_be_annotated_with_a_payload_subclass(
    registry: Registry, annotation: str
) -> None:
    def unannotated(payload):  # type: ignore[no-untyped-def]
        pass

    def a_dict(payload: dict[str, Any]) -> None:
        pass

    def a_basemodel(payload: NotAPayload) -> None:
        pass

    def an_int(payload: int) -> None:
        pass

    fn = {"unannotated": unannotated, "dict": a_dict, "basemodel": a_basemodel, "int": an_int}
    with pytest.raises(TypeError, match="Payload subclass"):
        job(queue="images", name="images.resize", registry=registry)(fn[annotation])
    assert len(registry) == 0


def test_more_than_two_parameters_is_an_error(registry: Registry) -> None:
    def resize(payload: Resize, ctx: JobContext, extra: int) -> None:
        pass

    with pytest.raises(TypeError, match=r"\(payload\) or \(payload, ctx\)"):
        job(queue="images", name="images.resize", registry=registry)(resize)
    assert len(registry) == 0


def test_no_parameter_at_all_is_an_error(registry: Registry) -> None:
    def resize() -> None:
        pass

    with pytest.raises(TypeError, match=r"\(payload\) or \(payload, ctx\)"):
        job(queue="images", name="images.resize", registry=registry)(resize)


def test_declaring_the_same_name_twice_is_an_error(registry: Registry) -> None:
    @job(queue="images", name="images.resize", registry=registry)
    def first(payload: Resize) -> int:
        return 1

    def second(payload: Resize) -> int:
        return 2

    with pytest.raises(ValueError, match="already declared"):
        job(queue="other", name="images.resize", registry=registry)(second)
    assert registry.get("images.resize").fn is first


@pytest.mark.parametrize(
    "name", ["resize", "Images.resize", "images.", ".resize", "images..resize", "images.re-size"]
)
def test_a_name_not_shaped_domain_action_is_an_error(registry: Registry, name: str) -> None:
    def resize(payload: Resize) -> None:
        pass

    with pytest.raises(ValueError, match=r"domain\.action"):
        job(queue="images", name=name, registry=registry)(resize)
    assert len(registry) == 0


@pytest.mark.parametrize("name", ["images.resize", "a.b.c", "billing_v2.send_invoice"])
def test_names_shaped_domain_action_are_accepted(registry: Registry, name: str) -> None:
    def resize(payload: Resize) -> None:
        pass

    job(queue="images", name=name, registry=registry)(resize)
    assert name in registry


def test_negative_max_retries_is_an_error(registry: Registry) -> None:
    with pytest.raises(ValueError, match="max_retries"):
        job(queue="images", name="images.resize", max_retries=-1, registry=registry)


def test_zero_max_retries_is_allowed(registry: Registry) -> None:
    @job(queue="images", name="images.resize", max_retries=0, registry=registry)
    def resize(payload: Resize) -> None:
        pass

    assert registry.get("images.resize").retry.max_retries == 0


@pytest.mark.parametrize(
    ("min_backoff", "max_backoff"),
    [
        (dt.timedelta(0), dt.timedelta(seconds=1)),
        (dt.timedelta(seconds=-1), dt.timedelta(seconds=1)),
        (dt.timedelta(seconds=10), dt.timedelta(seconds=5)),
    ],
)
def test_bad_backoffs_are_an_error(
    registry: Registry, min_backoff: dt.timedelta, max_backoff: dt.timedelta
) -> None:
    with pytest.raises(ValueError, match="backoffs"):
        job(
            queue="images",
            name="images.resize",
            min_backoff=min_backoff,
            max_backoff=max_backoff,
            registry=registry,
        )


@pytest.mark.parametrize("time_limit", [dt.timedelta(0), dt.timedelta(seconds=-5)])
def test_a_time_limit_that_is_not_positive_is_an_error(
    registry: Registry, time_limit: dt.timedelta
) -> None:
    with pytest.raises(ValueError, match="time_limit"):
        job(queue="images", name="images.resize", time_limit=time_limit, registry=registry)


# --- lookups ---------------------------------------------------------------------------------


def test_getting_an_unknown_type_lists_the_known_ones(registry: Registry) -> None:
    for name in ("images.resize", "billing.invoice"):

        def fn(payload: Resize) -> None:
            pass

        job(queue="q", name=name, registry=registry)(fn)

    with pytest.raises(InvalidRequestError) as caught:
        registry.get("images.rotate")
    error = caught.value
    assert error.status == 422
    assert "'images.rotate'" in error.detail
    assert "known types: billing.invoice, images.resize" in error.detail
    assert error.errors == [
        {"field": "type", "message": "unknown job type; known: billing.invoice, images.resize"}
    ]


def test_getting_a_type_from_an_empty_registry_says_none_are_known(registry: Registry) -> None:
    with pytest.raises(InvalidRequestError, match="known types: none"):
        registry.get("images.resize")


def test_iteration_is_sorted_by_name(registry: Registry) -> None:
    for name in ("zeta.z", "alpha.a", "mid.m"):

        def fn(payload: Resize) -> None:
            pass

        job(queue=name.split(".")[0], name=name, registry=registry)(fn)

    assert [t.name for t in registry] == ["alpha.a", "mid.m", "zeta.z"]


def test_a_private_registry_leaves_the_global_one_untouched(registry: Registry) -> None:
    before = len(JOBS)

    @job(queue="images", name="images.private_only", registry=registry)
    def private_only(payload: Resize) -> None:
        pass

    assert "images.private_only" not in JOBS
    assert len(JOBS) == before


def test_the_global_registry_holds_the_system_jobs() -> None:
    import conveyor.actors.all  # noqa: F401

    assert {"system.echo", "system.sleep", "system.fail"} <= {t.name for t in JOBS}
    assert JOBS.get("system.fail").retry.max_retries == 3


# --- retry backoff ---------------------------------------------------------------------------


def _capped(policy: RetryPolicy, attempt: int) -> float:
    exponential = policy.min_backoff.total_seconds() * 2 ** max(attempt - 1, 0)
    return min(exponential, policy.max_backoff.total_seconds())


def test_backoff_stays_within_half_and_all_of_the_capped_exponential() -> None:
    policy = RetryPolicy(10, dt.timedelta(seconds=1), dt.timedelta(seconds=60))
    rng = random.Random(1234)
    for attempt in range(1, 30):
        for _ in range(50):
            seconds = policy.backoff(attempt, rng).total_seconds()
            d = _capped(policy, attempt)
            assert d / 2 <= seconds <= d, (attempt, seconds, d)


def test_backoff_grows_exponentially_until_the_cap() -> None:
    policy = RetryPolicy(10, dt.timedelta(milliseconds=100), dt.timedelta(hours=1))
    rng = random.Random(7)
    delays = [policy.backoff(attempt, rng).total_seconds() for attempt in range(1, 12)]
    # each attempt's lower bound (d/2) is the previous attempt's upper bound (d)
    assert delays == sorted(delays)
    assert delays[0] <= 0.1
    assert delays[10] >= 0.1 * 2**10 / 2
    assert delays[10] / delays[0] >= 2**9


def test_backoff_never_exceeds_max_backoff() -> None:
    policy = RetryPolicy(100, dt.timedelta(seconds=1), dt.timedelta(seconds=30))
    rng = random.Random(99)
    delays = [policy.backoff(attempt, rng) for attempt in range(1, 101)]
    assert max(delays) <= dt.timedelta(seconds=30)
    assert min(delays[10:]) >= dt.timedelta(seconds=15)


def test_backoff_is_jittered() -> None:
    policy = RetryPolicy(3, dt.timedelta(seconds=8), dt.timedelta(seconds=8))
    rng = random.Random(5)
    delays = {policy.backoff(1, rng).total_seconds() for _ in range(200)}
    assert len(delays) > 100
    assert min(delays) < 4.5 and max(delays) > 7.5


def test_backoff_with_the_same_seed_is_reproducible() -> None:
    policy = RetryPolicy()
    first = [policy.backoff(a, random.Random(3)) for a in range(1, 10)]
    second = [policy.backoff(a, random.Random(3)) for a in range(1, 10)]
    assert first == second


def test_backoff_of_attempt_zero_is_the_minimum() -> None:
    policy = RetryPolicy(3, dt.timedelta(seconds=2), dt.timedelta(seconds=10))
    seconds = policy.backoff(0, random.Random(1)).total_seconds()
    assert 1 <= seconds <= 2


def test_backoff_without_an_rng_uses_the_global_random() -> None:
    policy = RetryPolicy(3, dt.timedelta(seconds=1), dt.timedelta(seconds=4))
    assert dt.timedelta(seconds=1) <= policy.backoff(3) <= dt.timedelta(seconds=4)


def test_backoff_of_a_very_late_attempt_is_max_backoff() -> None:
    policy = RetryPolicy(5000, dt.timedelta(seconds=1), dt.timedelta(hours=1))
    delay = policy.backoff(2000, random.Random(1))
    assert dt.timedelta(minutes=30) <= delay <= dt.timedelta(hours=1)


# --- payloads and running -------------------------------------------------------------------


def test_payloads_are_frozen() -> None:
    payload = Resize(width=3)
    with pytest.raises(ValidationError, match="frozen"):
        payload.width = 4  # type: ignore[misc]
    assert payload.width == 3


def test_payloads_forbid_extra_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Resize.model_validate({"width": 3, "depth": 1})


def test_payloads_validate_their_fields() -> None:
    with pytest.raises(ValidationError):
        Resize.model_validate({"width": "wide"})
    assert Resize.model_validate({"width": "3"}) == Resize(width=3, height=10)


class Shape(Payload):
    ratio: float = 1.0
    sides: list[int] = Field(default_factory=list)
    scale: dict[str, float] = Field(default_factory=dict)
    corner: int | None = None
    label: int | str = "none"
    filled: bool = False
    flag_or_count: bool | int = 0


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("width", True, "width"),
        ("height", False, "height"),
    ],
)
def test_payload_numbers_refuse_booleans(field: str, value: bool, where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Resize.model_validate({"width": 3, field: value})
    [error] = caught.value.errors()
    assert error["loc"] == (where,)
    assert "boolean" in error["msg"]


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"ratio": True}, ("ratio",)),
        ({"sides": [3, True]}, ("sides", 1)),
        ({"scale": {"x": False}}, ("scale", "x")),
        ({"corner": True}, ("corner",)),
    ],
)
def test_numbers_inside_containers_and_optionals_refuse_booleans(
    payload: dict[str, Any], where: tuple[Any, ...]
) -> None:
    with pytest.raises(ValidationError) as caught:
        Shape.model_validate(payload)
    assert [e["loc"] for e in caught.value.errors()] == [where]


def test_a_number_or_text_field_refuses_a_boolean_too() -> None:
    with pytest.raises(ValidationError):
        Shape.model_validate({"label": True})
    assert Shape.model_validate({"label": 3}).label == 3


def test_fields_that_take_booleans_still_take_them() -> None:
    shape = Shape.model_validate({"filled": True, "flag_or_count": True})
    assert shape.filled is True and shape.flag_or_count is True
    assert Shape.model_validate({"flag_or_count": 2}).flag_or_count == 2


def test_numbers_still_take_numbers_and_their_schema_is_unchanged() -> None:
    assert Shape.model_validate({"ratio": 2, "sides": [3, 4]}) == Shape(ratio=2.0, sides=[3, 4])
    schema = Shape.model_json_schema()["properties"]
    assert schema["ratio"] == {"default": 1.0, "title": "Ratio", "type": "number"}
    assert schema["sides"]["items"] == {"type": "integer"}


def test_the_system_payloads_refuse_booleans() -> None:
    for name, payload in [
        ("system.sleep", {"seconds": True}),
        ("system.sleep", {"steps": True}),
        ("system.fail", {"failures": True}),
    ]:
        with pytest.raises(ValidationError):
            JOBS.get(name).payload.model_validate(payload)


def test_an_async_job_function_is_awaited_by_run(registry: Registry) -> None:
    @job(queue="images", name="images.resize", registry=registry)
    async def resize(payload: Resize) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"area": payload.width * payload.height}

    assert fake_ctx().run(registry.get("images.resize"), Resize(width=2, height=5)) == {"area": 10}


def test_an_async_job_function_with_a_context_gets_it(registry: Registry) -> None:
    @job(queue="images", name="images.resize", registry=registry)
    async def resize(payload: Resize, ctx: JobContext) -> str:
        await asyncio.sleep(0)
        return ctx.job_id

    assert fake_ctx().run(registry.get("images.resize"), Resize(width=1)) == JOB_ID


def test_a_sync_job_function_runs_without_a_context(registry: Registry) -> None:
    @job(queue="images", name="images.resize", registry=registry)
    def resize(payload: Resize) -> int:
        return payload.width

    assert fake_ctx().run(registry.get("images.resize"), Resize(width=4)) == 4


def test_an_error_in_a_job_function_propagates_from_run(registry: Registry) -> None:
    @job(queue="images", name="images.resize", registry=registry)
    async def resize(payload: Resize) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fake_ctx().run(registry.get("images.resize"), Resize(width=1))
