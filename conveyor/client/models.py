"""What the client returns: jobs, pages of jobs, events and job types, notifications and their
deliveries, read from the API's JSON.

These mirror the API's documents, not the server's code, so the client works on its own. They
are lenient where a newer server may add things (unknown fields are kept in `raw`, an unknown
status is kept as it is) and strict where the client needs a value (a job without an `id`).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.client.errors import ProtocolError


class JobStatus(enum.StrEnum):
    """Where a job is in its lifecycle; compares equal to its name (`"succeeded"`)."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def _missing_(cls, value: object) -> JobStatus | None:
        """A status a newer server knows: kept as a member outside the list above."""
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        return member

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled: nothing more happens to the job (unless retried)."""
        return self in FINISHED


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class JobError:
    """The error of a job's last failed attempt: the exception's type and message, and its
    traceback where the server gives one."""

    type: str
    message: str
    traceback: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> JobError | None:
        if not isinstance(data, dict):
            return None
        traceback = data.get("traceback")
        return cls(
            str(data.get("type", "")),
            str(data.get("message", "")),
            traceback if isinstance(traceback, str) else None,
            data,
        )


@dataclass(frozen=True)
class Job:
    """A job as the API shows it (`GET /v1/jobs/{id}`).

    In a list, `payload` and `result` are `None` unless `include` asked for them, and
    `omitted` names those left out because the job was too large for the page. `raw` is the
    whole JSON object, fields a newer server added included.
    """

    id: str
    type: str
    queue: str
    status: JobStatus
    payload: dict[str, Any] | None
    result: Any
    error: JobError | None
    attempts: int
    max_retries: int
    worker_losses: int
    progress: float | None
    owner_id: str | None
    parent_id: str | None
    idempotency_key: str | None
    cancel_requested: bool
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    run_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    url: str
    omitted: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled."""
        return self.status in FINISHED

    @classmethod
    def from_json(cls, data: Any) -> Job:
        """The job of a JSON object from the API; `ProtocolError` if it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ProtocolError(f"expected a job, got {_sample(data)}")
        try:
            return cls(
                id=data["id"],
                type=str(data.get("type", "")),
                queue=str(data.get("queue", "")),
                status=JobStatus(data["status"]),
                payload=data.get("payload"),
                result=data.get("result"),
                error=JobError.from_json(data.get("error")),
                attempts=int(data.get("attempts") or 0),
                max_retries=int(data.get("max_retries") or 0),
                worker_losses=int(data.get("worker_losses") or 0),
                progress=_float(data.get("progress")),
                owner_id=data.get("owner_id"),
                parent_id=data.get("parent_id"),
                idempotency_key=data.get("idempotency_key"),
                cancel_requested=bool(data.get("cancel_requested")),
                created_at=_time(data.get("created_at")),
                updated_at=_time(data.get("updated_at")),
                run_at=_time(data.get("run_at")),
                started_at=_time(data.get("started_at")),
                finished_at=_time(data.get("finished_at")),
                next_attempt_at=_time(data.get("next_attempt_at")),
                url=str(data.get("url") or f"/v1/jobs/{data['id']}"),
                omitted=tuple(data.get("omitted") or ()),
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"a job the client cannot read ({exc!r}): {_sample(data)}") from exc


@dataclass(frozen=True)
class Page:
    """One page of `GET /v1/jobs`: its jobs, newest first, and where the next page starts.

    `next_cursor` is `None` on the last page; `next_url` is the server's `Link: rel="next"`.
    """

    items: tuple[Job, ...]
    next_cursor: str | None
    next_url: str | None = None

    @classmethod
    def from_json(cls, data: Any, next_url: str | None = None) -> Page:
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise ProtocolError(f"expected a page of jobs, got {_sample(data)}")
        cursor = data.get("next_cursor")
        return cls(
            tuple(Job.from_json(item) for item in data["items"]),
            cursor if isinstance(cursor, str) and cursor else None,
            next_url,
        )


@dataclass(frozen=True)
class Event:
    """One server-sent event of a job: a `status` transition or a `progress` report.

    `id` increases along the job's history; give the last one seen as `last_event_id` to
    resume after it.
    """

    id: int
    kind: str
    job_id: str
    status: JobStatus
    attempt: int
    progress: float | None
    message: str | None
    at: dt.datetime | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def final(self) -> bool:
        """The job's final status: the stream ends after it."""
        return self.kind == "status" and self.status in FINISHED

    @classmethod
    def from_sse(cls, event_id: str, event: str, data: str) -> Event:
        try:
            body = json.loads(data)
            return cls(
                id=int(event_id),
                kind=str(body.get("kind") or event),
                job_id=str(body["job_id"]),
                status=JobStatus(body["status"]),
                attempt=int(body.get("attempt") or 0),
                progress=_float(body.get("progress")),
                message=body.get("message"),
                at=_time(body.get("at")),
                raw=body,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"an event the client cannot read: {event_id!r}, {data!r}") from exc


@dataclass(frozen=True)
class JobType:
    """A job type the server runs (`GET /v1/job-types`)."""

    name: str
    queue: str
    description: str
    max_retries: int
    time_limit_seconds: float | None
    payload_schema: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Any) -> JobType:
        try:
            return cls(
                name=data["name"],
                queue=data.get("queue", ""),
                description=data.get("description", ""),
                max_retries=int(data.get("max_retries") or 0),
                time_limit_seconds=_float(data.get("time_limit_seconds")),
                payload_schema=data.get("payload_schema") or {},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"a job type the client cannot read: {_sample(data)}") from exc


@dataclass(frozen=True)
class Delivery:
    """One message of a notification: one recipient over one channel (`email`, `webhook`,
    `sms`, `push`). `status` is `pending`, `sending`, `sent`, `failed` or `suppressed`."""

    id: str
    notification_id: str
    user_id: str | None
    channel: str
    address: str
    status: str
    attempts: int
    last_error: str | None
    provider: str | None
    provider_message_id: str | None
    job_id: str | None
    digest_id: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    sent_at: dt.datetime | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Sent, failed or suppressed: nothing will change it (but a retry of its job)."""
        return self.status in ("sent", "failed", "suppressed")

    @classmethod
    def from_json(cls, data: Any) -> Delivery:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ProtocolError(f"expected a delivery, got {_sample(data)}")
        try:
            return cls(
                id=data["id"],
                notification_id=str(data.get("notification_id", "")),
                user_id=data.get("user_id"),
                channel=str(data.get("channel", "")),
                address=str(data.get("address", "")),
                status=str(data["status"]),
                attempts=int(data.get("attempts") or 0),
                last_error=data.get("last_error"),
                provider=data.get("provider"),
                provider_message_id=data.get("provider_message_id"),
                job_id=data.get("job_id"),
                digest_id=data.get("digest_id"),
                created_at=_time(data.get("created_at")),
                updated_at=_time(data.get("updated_at")),
                sent_at=_time(data.get("sent_at")),
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(
                f"a delivery the client cannot read ({exc!r}): {_sample(data)}"
            ) from exc


@dataclass(frozen=True)
class Notification:
    """A notification (`GET /v1/notifications/{id}`) and its deliveries."""

    id: str
    kind: str
    owner_id: str | None
    context: dict[str, Any]
    idempotency_key: str | None
    created_at: dt.datetime | None
    deliveries: tuple[Delivery, ...]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Every delivery is sent, failed or suppressed."""
        return all(d.finished for d in self.deliveries)

    @classmethod
    def from_json(cls, data: Any) -> Notification:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ProtocolError(f"expected a notification, got {_sample(data)}")
        try:
            return cls(
                id=data["id"],
                kind=str(data.get("kind", "")),
                owner_id=data.get("owner_id"),
                context=dict(data.get("context") or {}),
                idempotency_key=data.get("idempotency_key"),
                created_at=_time(data.get("created_at")),
                deliveries=tuple(Delivery.from_json(d) for d in data.get("deliveries") or ()),
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(
                f"a notification the client cannot read ({exc!r}): {_sample(data)}"
            ) from exc


@dataclass(frozen=True)
class DeliveryPage:
    """One page of `GET /v1/deliveries`, newest first; `next_cursor` is `None` on the last."""

    items: tuple[Delivery, ...]
    next_cursor: str | None
    next_url: str | None = None

    @classmethod
    def from_json(cls, data: Any, next_url: str | None = None) -> DeliveryPage:
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise ProtocolError(f"expected a page of deliveries, got {_sample(data)}")
        cursor = data.get("next_cursor")
        return cls(
            tuple(Delivery.from_json(item) for item in data["items"]),
            cursor if isinstance(cursor, str) and cursor else None,
            next_url,
        )


def _time(value: Any) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _sample(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 200 else text[:200] + "..."
