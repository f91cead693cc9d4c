"""What the client raises: an error answer of the API (one class per status, built from its
problem document), no answer at all, an answer that is not the API's, or a wait that ran out.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from conveyor.client.models import Job

PROBLEM_TYPE = "application/problem+json"


class ClientError(Exception):
    """Root of everything `conveyor.client` raises on purpose."""


class TransportError(ClientError):
    """No answer came: the connection failed, was dropped or timed out (after the retries)."""


class ProtocolError(ClientError):
    """The answer is not one the API gives (not JSON, or missing what the client needs)."""


class WaitTimeoutError(ClientError, TimeoutError):
    """`wait()` ran out of time before the job finished; `job` is the job as last seen."""

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job


@dataclass(frozen=True)
class FieldError:
    """One bad field of a request, as a problem document's `errors` names it."""

    field: str
    message: str


class ApiError(ClientError):
    """An error answer of the API, from its RFC 9457 problem document.

    `status`, `title`, `detail` and `type` are the document's; `errors` lists each bad field
    (`payload.seconds`); `retry_after` is the `Retry-After` header in seconds, if any;
    `request_id` is the answer's `X-Request-Id`, which the server's log names too.
    """

    status_code: ClassVar[int | None] = None

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str = "about:blank",
        errors: tuple[FieldError, ...] = (),
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = errors
        self.retry_after = retry_after
        self.request_id = request_id
        text = f"{status} {title}: {detail}"
        if errors:
            text += " (" + "; ".join(f"{e.field}: {e.message}" for e in errors) + ")"
        super().__init__(text)

    @property
    def fields(self) -> dict[str, str]:
        """The bad fields: name -> message (the first message of a field named twice)."""
        out: dict[str, str] = {}
        for error in self.errors:
            out.setdefault(error.field, error.message)
        return out


class BadRequestError(ApiError):
    """400: the request could not be read (malformed JSON, a bad cursor or Idempotency-Key)."""

    status_code = 400


class UnauthorizedError(ApiError):
    """401: the token is missing, malformed, expired, or its user is unknown or inactive."""

    status_code = 401


class ForbiddenError(ApiError):
    """403: the token's user may not do this."""

    status_code = 403


class NotFoundError(ApiError):
    """404: no such job (or another member's), or no such route."""

    status_code = 404


class ConflictError(ApiError):
    """409: the job's state does not allow it, or the same Idempotency-Key is in flight."""

    status_code = 409


class PayloadTooLargeError(ApiError):
    """413: the request body is larger than the server accepts."""

    status_code = 413


class InvalidRequestError(ApiError):
    """422: a field is not acceptable (an unknown type, a bad payload); `errors` names it."""

    status_code = 422


class RateLimitedError(ApiError):
    """429: too many of a limited resource (open event streams); retry after `retry_after`."""

    status_code = 429


class ServerError(ApiError):
    """5xx: the server failed; an unexpected error is logged under `request_id`."""


class ServiceUnavailableError(ServerError):
    """503: a service the server needs (the database) is unavailable; retry after a while."""

    status_code = 503


_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status_code: cls
    for cls in (
        BadRequestError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        InvalidRequestError,
        RateLimitedError,
        ServiceUnavailableError,
    )
    if cls.status_code is not None
}


def api_error(status: int, headers: Mapping[str, str], body: bytes, reason: str = "") -> ApiError:
    """The error an answer stands for: from its problem document, or, when a proxy answered
    with something else, from its status and the start of its body."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    retry_after = parse_retry_after(headers.get("retry-after"))
    request_id = headers.get("x-request-id") or None
    document: Any = None
    try:
        document = json.loads(body) if body else None
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("title"), str):
        errors = tuple(
            FieldError(str(item.get("field", "")), str(item.get("message", "")))
            for item in document.get("errors") or ()
            if isinstance(item, dict)
        )
        return cls(
            status,
            document["title"],
            str(document.get("detail") or document["title"]),
            type=str(document.get("type") or "about:blank"),
            errors=errors,
            retry_after=retry_after,
            request_id=request_id,
        )
    text = body[:200].decode("utf-8", "replace").strip()
    return cls(
        status,
        reason or f"HTTP {status}",
        text or "the answer has no problem document",
        retry_after=retry_after,
        request_id=request_id,
    )


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds from now: delta-seconds, or an HTTP date; None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)
