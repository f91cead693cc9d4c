"""Helpers for unit-testing job functions without a worker: a `JobContext` you control.

ctx = FakeContext(resources={"mail": FakeMail()})
assert ctx.run(send_welcome, SendWelcome(user_id=7)) == {"sent": 1}
assert ctx.submitted[0].job_type == "notifications.send"
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from conveyor.errors import InvalidRequestError, JobCancelledError, UnknownResourceError
from conveyor.outbound import HttpClient
from conveyor.registry import JOB_TYPE_ATTRIBUTE, JOBS, JobType, Payload, Registry
from conveyor.services.submissions import build
from conveyor.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class SubmittedChild:
    """A `ctx.submit` call a `FakeContext` recorded."""

    id: uuid.UUID
    job_type: str
    payload: dict[str, Any]  #: as validated and dumped
    idempotency_key: str | None
    run_at: dt.datetime | None
    delay: dt.timedelta | float | None


@dataclass
class FakeContext:
    """A `JobContext` that records what the job did (progress, sleeps, child jobs) and hands
    it the settings, database, HTTP client and resources given to it. Unset ones raise."""

    job_id: uuid.UUID = field(default_factory=uuid.uuid4)
    attempt: int = 1
    owner_id: uuid.UUID = field(default_factory=uuid.uuid4)
    parent_id: uuid.UUID | None = None
    cancelled: bool = False
    given_settings: Settings | None = None
    given_db: sessionmaker[Session] | None = None
    given_http: HttpClient | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    #: The job types `submit` accepts (every imported one, by default), and how far ahead.
    registry: Registry = field(default=JOBS, repr=False)
    max_delay: dt.timedelta = dt.timedelta(days=366)
    progress_reports: list[tuple[float, str | None]] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)
    submitted: list[SubmittedChild] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return _given(self.given_settings, "given_settings")

    @property
    def db(self) -> sessionmaker[Session]:
        return _given(self.given_db, "given_db")

    @property
    def http(self) -> HttpClient:
        return _given(self.given_http, "given_http")

    def resource(self, name: str) -> Any:
        try:
            return self.resources[name]
        except KeyError:
            raise UnknownResourceError(f"no resource {name!r} was given") from None

    def submit(
        self,
        job_type: str | Callable[..., Any],
        payload: Payload | Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        run_at: dt.datetime | None = None,
        delay: dt.timedelta | float | None = None,
    ) -> uuid.UUID:
        """Record a child job, validated as the real `ctx.submit` validates it (its type must
        be in `registry`); the same key gives the same child, another request with it a 422."""
        new = build(
            self.registry,
            self.max_delay,
            job_type,
            payload,
            owner_id=self.owner_id,
            idempotency_key=idempotency_key,
            run_at=run_at,
            delay=delay,
            parent_id=self.job_id,
        )
        for child in self.submitted:
            if idempotency_key is None or child.idempotency_key != idempotency_key:
                continue
            if (child.job_type, child.payload) != (new.job_type, new.payload):
                raise InvalidRequestError(
                    "this Idempotency-Key was already used with a different request",
                    errors=[{"field": "Idempotency-Key", "message": "reused key"}],
                )
            return child.id
        child = SubmittedChild(
            uuid.uuid4(), new.job_type, new.payload, idempotency_key, run_at, delay
        )
        self.submitted.append(child)
        return child.id

    async def asubmit(
        self,
        job_type: str | Callable[..., Any],
        payload: Payload | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> uuid.UUID:
        return self.submit(job_type, payload, **options)

    def cancel(self) -> None:
        """What a cancel request does: the next `progress` or `sleep` raises."""
        self.cancelled = True

    def progress(self, fraction: float, message: str | None = None) -> None:
        self.progress_reports.append((fraction, message))
        self._raise_if_cancelled()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._raise_if_cancelled()

    async def aprogress(self, fraction: float, message: str | None = None) -> None:
        self.progress(fraction, message)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def _raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise JobCancelledError()

    def run(self, job: JobType | Callable[..., Any], payload: Payload) -> Any:
        """Call a job function (declared with `@job`) as a worker would, awaiting it when it
        is `async def`; returns its result."""
        spec = job if isinstance(job, JobType) else getattr(job, JOB_TYPE_ATTRIBUTE)
        value = spec.call(payload, self)
        return asyncio.run(value) if spec.is_async else value


def _given(value: T | None, name: str) -> T:
    if value is None:
        raise LookupError(f"this FakeContext has no {name.removeprefix('given_')}: pass {name}=")
    return value
