"""Job types, declared once: payload model, pool, retry policy, time limit and function.

HTTP validation, `GET /v1/job-types`, the OpenAPI document and the workers all read `JOBS`.
"""

from __future__ import annotations

import datetime as dt
import inspect
import random
import re
import threading
import typing
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler
from pydantic_core import CoreSchema, PydanticCustomError, core_schema
from sqlalchemy.orm import Session, sessionmaker

from conveyor.errors import InvalidRequestError
from conveyor.outbound import HttpClient
from conveyor.settings import Settings

NAME_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
#: The attribute `@job` sets on the function it declares (so it can be submitted by itself).
JOB_TYPE_ATTRIBUTE = "__conveyor_job_type__"


#: Core schema types of numbers, which pydantic would also fill from `true` and `false`.
_NUMBERS = frozenset({"int", "float", "decimal"})
#: Keys of a core schema that hold no validation schema (JSON Schema hints, serializers).
_NOT_VALIDATION = frozenset({"metadata", "serialization"})


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "Input should be a number, not a boolean")
    return value


def _numbers_refuse_booleans(schema: Any) -> Any:
    """A copy of a core schema in which every number refuses `true` and `false` (a field
    that also takes booleans, `bool | int`, still takes them through its `bool` branch)."""
    if isinstance(schema, list):
        return [_numbers_refuse_booleans(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {
        key: value if key in _NOT_VALIDATION else _numbers_refuse_booleans(value)
        for key, value in schema.items()
    }
    if copy.get("type") in _NUMBERS:
        return core_schema.no_info_before_validator_function(_not_a_boolean, copy)
    return copy


class Payload(BaseModel):
    """Base of every job payload: immutable, and unknown fields are an error.

    NaN and infinities are refused (no database column stores them): a float field rejects
    them when validated, and a dump keeps them as they are, so that an extra field's
    infinity is caught rather than silently written as `null`.

    Number fields refuse booleans (pydantic alone reads `{"seconds": true}` as 1 second), in
    lists, dicts and optionals too. A model nested in a payload gets these rules by deriving
    from `Payload` as well.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, ser_json_inf_nan="constants"
    )

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[BaseModel], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return _numbers_refuse_booleans(handler(source))  # type: ignore[no-any-return]


class JobContext(Protocol):
    """What a running job may ask of its worker (a second parameter named `ctx`).

    The worker passes its own implementation; a unit test may pass any object with these
    members (`conveyor.testing.FakeContext` is one).
    """

    @property
    def job_id(self) -> uuid.UUID:
        """The job's id."""

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, and so on."""

    @property
    def owner_id(self) -> uuid.UUID:
        """The user who owns the job (child jobs get the same owner)."""

    @property
    def parent_id(self) -> uuid.UUID | None:
        """The job that submitted this one with `ctx.submit`, if any."""

    @property
    def cancelled(self) -> bool:
        """True once someone asked to cancel this job."""

    @property
    def settings(self) -> Settings:
        """The process's settings."""

    @property
    def db(self) -> sessionmaker[Session]:
        """Database sessions: `with ctx.db.begin() as session: ...` commits on success."""

    @property
    def http(self) -> HttpClient:
        """The process's shared outbound HTTP client (timeouts and size limits set)."""

    def resource(self, name: str) -> Any:
        """A resource the job's pool registered at boot (a mail sender, an object store)."""

    def submit(
        self,
        job_type: str | Callable[..., Any],
        payload: Payload | Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        run_at: dt.datetime | None = None,
        delay: dt.timedelta | float | None = None,
    ) -> uuid.UUID:
        """Submit a child job (same owner, this job as its parent); returns its id.

        With an `idempotency_key`, a retried attempt that submits again gets the same child.
        """

    async def asubmit(
        self,
        job_type: str | Callable[..., Any],
        payload: Payload | Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        run_at: dt.datetime | None = None,
        delay: dt.timedelta | float | None = None,
    ) -> uuid.UUID:
        """`submit` for `async def` jobs: the write runs off the event loop."""

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress (0.0 to 1.0) with an optional note; raises when cancelled."""

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (and raising) when the job is cancelled."""

    async def aprogress(self, fraction: float, message: str | None = None) -> None:
        """`progress` for `async def` jobs: the write runs off the event loop."""

    async def asleep(self, seconds: float) -> None:
        """`sleep` for `async def` jobs (a cancel also cancels the job's task)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long after a failure a job runs again."""

    max_retries: int = 3
    min_backoff: dt.timedelta = dt.timedelta(seconds=1)
    max_backoff: dt.timedelta = dt.timedelta(hours=1)
    #: `equal`: half the exponential delay plus up to half again at random; `full`: anything
    #: from zero to the exponential delay (spreads a burst of retries against one provider).
    jitter: Literal["equal", "full"] = "equal"

    def backoff(self, attempt: int, rng: random.Random | None = None) -> dt.timedelta:
        """Exponential backoff after failed attempt `attempt` (1-based), with jitter."""
        base = self.min_backoff.total_seconds() * 2 ** min(max(attempt - 1, 0), 64)
        ceiling = min(base, self.max_backoff.total_seconds())
        if self.jitter == "full":
            return dt.timedelta(seconds=(rng or random).uniform(0, ceiling))
        jitter = (rng or random).uniform(0, ceiling / 2)
        return dt.timedelta(seconds=ceiling / 2 + jitter)


@dataclass(frozen=True)
class JobType:
    """A declared job type; everything about it that any process needs to know."""

    name: str
    payload: type[Payload]
    fn: Callable[..., Any] = field(repr=False)
    queue: str
    retry: RetryPolicy
    time_limit: dt.timedelta | None
    description: str
    takes_context: bool
    #: Exceptions that fail a job of this type at once, never retried.
    permanent: tuple[type[BaseException], ...] = ()
    #: An `async def` function (run on the process's job loop).
    is_async: bool = False
    #: Conveyor's own work (an account's emails, a notification's delivery): services submit
    #: it, the API does not (`Registry.submittable`), and it is left out of the listings.
    internal: bool = False

    def call(self, payload: Payload, ctx: JobContext) -> Any:
        """Call the function: its result, or (for an `async def`) the coroutine to await."""
        return self.fn(payload, ctx) if self.takes_context else self.fn(payload)


class Registry:
    """Job types by name; declaring a name twice is an error."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}
        self._lock = threading.Lock()

    def add(self, job_type: JobType) -> JobType:
        with self._lock:
            if job_type.name in self._types:
                raise ValueError(f"job type {job_type.name!r} is already declared")
            self._types[job_type.name] = job_type
        return job_type

    def get(self, name: str | Callable[..., Any]) -> JobType:
        """The job type called `name` (or declared by that function), or a 422 that lists the
        known ones."""
        if not isinstance(name, str):
            declared: JobType | None = getattr(name, JOB_TYPE_ATTRIBUTE, None)
            if declared is None:
                raise TypeError(f"{name!r} is not a function declared with @job")
            name = declared.name
        try:
            return self._types[name]
        except KeyError:
            raise self._unknown(name) from None

    def submittable(self, name: str) -> JobType:
        """The job type called `name` that users may submit: an internal one is as unknown
        as a missing one (the same 422, whose list names only the public types)."""
        found = self._types.get(name)
        if found is None or found.internal:
            raise self._unknown(name)
        return found

    def public(self) -> list[JobType]:
        """The job types users may submit, by name (the API's listings)."""
        return [job_type for job_type in self if not job_type.internal]

    def _unknown(self, name: str) -> InvalidRequestError:
        known = ", ".join(job_type.name for job_type in self.public()) or "none"
        return InvalidRequestError(
            f"unknown job type {name!r}; known types: {known}",
            errors=[{"field": "type", "message": f"unknown job type; known: {known}"}],
        )

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[JobType]:
        return iter(sorted(self._types.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._types)


#: Every job type of this process (complete once `conveyor.actors.all` is imported).
JOBS = Registry()


def job(
    *,
    queue: str,
    name: str | None = None,
    max_retries: int = 3,
    min_backoff: dt.timedelta = dt.timedelta(seconds=1),
    max_backoff: dt.timedelta = dt.timedelta(hours=1),
    time_limit: dt.timedelta | None = dt.timedelta(minutes=10),
    permanent: tuple[type[BaseException], ...] = (),
    jitter: Literal["equal", "full"] = "equal",
    internal: bool = False,
    registry: Registry = JOBS,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a job type. Its name defaults to `<module>.<function>` (`system.echo`).

    The function takes the payload (a `Payload` subclass, from its annotation) and optionally
    a second parameter `ctx: JobContext`; it returns a JSON-serialisable result. `permanent`
    lists the exception classes that fail the job at once instead of being retried; `jitter`
    is that of the backoff (see `RetryPolicy`). An `internal` job type is submitted only by
    Conveyor's own services: the API refuses it and does not list it.
    """
    if not all(inspect.isclass(exc) and issubclass(exc, BaseException) for exc in permanent):
        raise TypeError("permanent must be a tuple of exception classes")
    if max_retries < 0:
        raise ValueError("max_retries must be zero or more")
    if min_backoff <= dt.timedelta(0) or max_backoff < min_backoff:
        raise ValueError("backoffs must be positive, with max_backoff >= min_backoff")
    if time_limit is not None and time_limit <= dt.timedelta(0):
        raise ValueError("time_limit must be positive")
    if jitter not in ("equal", "full"):
        raise ValueError("jitter must be 'equal' or 'full'")

    def declare(fn: Callable[..., Any]) -> Callable[..., Any]:
        job_name = name or f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
        if not re.match(NAME_PATTERN, job_name):
            raise ValueError(f"job name {job_name!r} must look like 'domain.action'")
        params = list(inspect.signature(fn).parameters.values())
        if not 1 <= len(params) <= 2:
            raise TypeError(f"{job_name}: a job takes (payload) or (payload, ctx)")
        hints = typing.get_type_hints(fn)
        payload = hints.get(params[0].name)
        if not (inspect.isclass(payload) and issubclass(payload, Payload)):
            raise TypeError(f"{job_name}: annotate the first parameter with a Payload subclass")
        job_type = registry.add(
            JobType(
                name=job_name,
                payload=payload,
                fn=fn,
                queue=queue,
                retry=RetryPolicy(max_retries, min_backoff, max_backoff, jitter),
                time_limit=time_limit,
                description=inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0],
                takes_context=len(params) == 2,
                permanent=tuple(permanent),
                is_async=inspect.iscoroutinefunction(fn),
                internal=internal,
            )
        )
        setattr(fn, JOB_TYPE_ATTRIBUTE, job_type)
        return fn

    return declare
