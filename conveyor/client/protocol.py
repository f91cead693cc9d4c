"""The client's core without I/O, shared by `Client` and `AsyncClient`: the requests of each
operation, how answers are read, when a request is sent again, and server-sent event lines."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from conveyor import __version__
from conveyor.client.errors import ApiError, ProtocolError, api_error, parse_retry_after
from conveyor.client.models import (
    DeliveryPage,
    Event,
    Job,
    JobStatus,
    JobType,
    Notification,
    Page,
)

USER_AGENT = f"conveyor-client/{__version__}"
#: Answers worth sending a request again for: the server (or a proxy before it) could not
#: take it right now. 429 only with a Retry-After; 409 only where a request says so.
RETRY_STATUSES = frozenset({502, 503, 504})
#: The longest single long-poll `wait()` asks for (the server caps `?wait` at its
#: CONVEYOR_MAX_WAIT_SECONDS, 60 s by default; a lower cap is detected and followed).
LONG_POLL_SECONDS = 30.0
#: How long an event stream may stay silent before the client reconnects (the server sends
#: a keep-alive every 15 s).
STREAM_IDLE_SECONDS = 45.0
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')

JobRef = str | uuid.UUID | Job
NotificationRef = str | uuid.UUID | Notification
#: A recipient: a user id, or `{"address": ..., "channel": ...}` (or `{"user_id": ...}`).
Recipient = str | uuid.UUID | Mapping[str, Any]


@dataclass(frozen=True)
class Request:
    """One API request. `hold` is how long the server may hold the answer (a long-poll), which
    the read timeout adds to the client's; `retry_conflict` sends it again on a 409 (the same
    Idempotency-Key in flight)."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    hold: float = 0.0
    retry_conflict: bool = False

    def target(self, base_path: str) -> str:
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{base_path}{self.path}{query}"


@dataclass(frozen=True)
class Response:
    """An answer: status, headers by lower-case name, and body. `retried` says the request
    had been sent before and failed (so it may have been carried out already)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    reason: str = ""
    retried: bool = False

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ProtocolError(
                f"expected JSON, got {self.status} {self.headers.get('content-type', '')}: "
                f"{self.body[:100]!r}"
            ) from exc

    def error(self) -> ApiError:
        return api_error(self.status, self.headers, self.body, self.reason)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before sending a request again after a connection error
    or an answer that says to retry (503, 502, 504; 429 with Retry-After).

    The n-th retry waits a random time between half and all of `backoff * 2**n` (at most
    `max_backoff`), or the server's Retry-After if that is longer; a Retry-After longer than
    `max_backoff` is not waited for: the error is raised with its `retry_after`.
    """

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before retry number `attempt` (from 0), or None: give up."""
        if attempt >= self.retries:
            return None
        ceiling = min(self.max_backoff, self.backoff * 2**attempt)
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            if retry_after > self.max_backoff:
                return None
            delay = max(delay, retry_after)
        return delay


def should_retry(request: Request, response: Response) -> tuple[bool, float | None]:
    """Whether the answer says to send the request again, and the Retry-After it gave."""
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if response.status in RETRY_STATUSES:
        return True, retry_after
    if response.status == 429 and retry_after is not None:
        return True, retry_after
    if response.status == 409 and request.retry_conflict:
        return True, retry_after
    return False, retry_after


def split_base_url(base_url: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and path prefix of the API's base URL (`http://host:8000`)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must have no query or fragment: {base_url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


def origin(base_url: str) -> str:
    """`scheme://host:port` of the base URL."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def headers(token: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    out.update(extra or {})
    return out


def job_id(job: JobRef) -> str:
    value = job.id if isinstance(job, Job) else str(job)
    if not value:
        raise ValueError("a job id is required")
    return value


def job_path(job: JobRef, suffix: str = "") -> str:
    return f"/v1/jobs/{quote(job_id(job), safe='')}{suffix}"


# -- the requests of each operation -------------------------------------------------------


def submit(
    job_type: str,
    payload: Mapping[str, Any] | None,
    *,
    idempotency_key: str,
    wait: float | None,
    delay_seconds: float | None,
    run_at: dt.datetime | str | None,
) -> Request:
    if delay_seconds is not None and run_at is not None:
        raise ValueError("give run_at or delay_seconds, not both")
    body: dict[str, Any] = {"type": job_type, "payload": dict(payload or {})}
    if delay_seconds is not None:
        body["delay_seconds"] = delay_seconds
    if run_at is not None:
        if isinstance(run_at, dt.datetime):
            if run_at.tzinfo is None:
                raise ValueError("run_at must be timezone-aware (datetime.now(datetime.UTC))")
            run_at = run_at.isoformat()
        body["run_at"] = run_at
    extra = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
    if wait is not None and wait > 0:
        extra["Prefer"] = f"wait={wait:g}"
    return Request(
        "POST",
        "/v1/jobs",
        headers=extra,
        body=json.dumps(body).encode(),
        hold=max(wait or 0.0, 0.0),
        retry_conflict=True,
    )


def new_idempotency_key() -> str:
    """A key for a submission the caller gave none: a retry of it cannot submit twice."""
    return f"conveyor-client-{uuid.uuid4()}"


def get(job: JobRef, *, wait: float = 0.0, until: str = "change") -> Request:
    query: tuple[tuple[str, str], ...] = ()
    if wait > 0:
        query = (("wait", f"{wait:.3f}"), ("until", until))
    return Request("GET", job_path(job), query, hold=wait)


def list_page(
    *,
    status: str | Iterable[str] | None,
    type: str | Iterable[str] | None,
    parent: JobRef | None,
    include: str | Iterable[str] | None,
    limit: int | None,
    cursor: str | None,
) -> Request:
    query: list[tuple[str, str]] = []
    for name, values in (("status", status), ("type", type), ("include", include)):
        joined = _joined(values)
        if joined:
            query.append((name, joined))
    if parent is not None:
        query.append(("parent", job_id(parent)))
    if limit is not None:
        query.append(("limit", str(limit)))
    if cursor:
        query.append(("cursor", cursor))
    return Request("GET", "/v1/jobs", tuple(query))


def _joined(values: str | Iterable[str] | None) -> str:
    if values is None:
        return ""
    if isinstance(values, str):
        return values
    return ",".join(str(v) for v in values)


def cancel(job: JobRef) -> Request:
    return Request("POST", job_path(job, "/cancel"))


def retry(job: JobRef) -> Request:
    return Request("POST", job_path(job, "/retry"))


def job_types() -> Request:
    return Request("GET", "/v1/job-types")


def events(job: JobRef, last_event_id: int | None) -> Request:
    extra = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        extra["Last-Event-ID"] = str(last_event_id)
    return Request("GET", job_path(job, "/events"), headers=extra)


def notify(
    kind: str,
    recipients: Iterable[Recipient],
    *,
    context: Mapping[str, Any] | None,
    channels: Iterable[str] | None,
    idempotency_key: str,
) -> Request:
    if isinstance(recipients, (str, bytes, Mapping)):
        raise TypeError("recipients is a list (of user ids or {'address', 'channel'} mappings)")
    listed = [dict(r) if isinstance(r, Mapping) else {"user_id": str(r)} for r in recipients]
    body: dict[str, Any] = {"kind": kind, "recipients": listed, "context": dict(context or {})}
    if channels is not None:
        if isinstance(channels, str):
            channels = [channels]
        body["channels"] = list(channels)
    extra = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
    return Request("POST", "/v1/notifications", headers=extra, body=json.dumps(body).encode())


def notification_id(notification: NotificationRef) -> str:
    value = notification.id if isinstance(notification, Notification) else str(notification)
    if not value:
        raise ValueError("a notification id is required")
    return value


def get_notification(notification: NotificationRef) -> Request:
    return Request("GET", f"/v1/notifications/{quote(notification_id(notification), safe='')}")


def deliveries_page(
    *,
    notification: NotificationRef | None,
    status: str | Iterable[str] | None,
    channel: str | Iterable[str] | None,
    limit: int | None,
    cursor: str | None,
) -> Request:
    query: list[tuple[str, str]] = []
    if notification is not None:
        query.append(("notification_id", notification_id(notification)))
    for name, values in (("status", status), ("channel", channel)):
        joined = _joined(values)
        if joined:
            query.append((name, joined))
    if limit is not None:
        query.append(("limit", str(limit)))
    if cursor:
        query.append(("cursor", cursor))
    return Request("GET", "/v1/deliveries", tuple(query))


# -- reading the answers ------------------------------------------------------------------


def read_job(response: Response) -> Job:
    if response.status >= 400:
        raise response.error()
    return Job.from_json(response.json())


def read_page(response: Response) -> Page:
    if response.status >= 400:
        raise response.error()
    match = _LINK_NEXT.search(response.headers.get("link", ""))
    return Page.from_json(response.json(), match.group(1) if match else None)


def read_job_types(response: Response) -> tuple[JobType, ...]:
    if response.status >= 400:
        raise response.error()
    data = response.json()
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ProtocolError(f"expected a list of job types, got {data!r:.200}")
    return tuple(JobType.from_json(item) for item in items)


#: The statuses a job may be retried from.
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


def is_retry_replayed(response: Response) -> bool:
    """A 409 to a retry that was sent before and failed: the first one may have gone through
    (then the job is no longer failed or cancelled), so the job is read to tell."""
    return response.status == 409 and response.retried


class EventStream:
    """A job's event stream across connections: parses `text/event-stream` lines, keeps the
    last event id for `Last-Event-ID`, drops an event it already gave, and knows when the
    job's final status has been seen."""

    def __init__(self, job: JobRef, last_event_id: int | None) -> None:
        self.job = job_id(job)
        self.last_id = last_event_id
        self.done = False
        self._reset()

    def request(self) -> Request:
        self._reset()
        return events(self.job, self.last_id)

    def _reset(self) -> None:
        self._id = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, raw: bytes) -> Event | None:
        """One line of the stream; the event it completes, if any (and new)."""
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        event_id, kind, data = self._id, self._event or "message", self._data
        self._reset()
        if not data or not event_id.isdigit():
            return None
        if self.last_id is not None and int(event_id) <= self.last_id:
            return None  # sent again after a reconnect: already given
        event = Event.from_sse(event_id, kind, "\n".join(data))
        self.last_id = event.id
        self.done = event.final
        return event


def read_notification(response: Response) -> Notification:
    if response.status >= 400:
        raise response.error()
    return Notification.from_json(response.json())


def read_deliveries(response: Response) -> DeliveryPage:
    if response.status >= 400:
        raise response.error()
    match = _LINK_NEXT.search(response.headers.get("link", ""))
    return DeliveryPage.from_json(response.json(), match.group(1) if match else None)
