"""The error hierarchy; the HTTP edge maps it to application/problem+json."""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    """Root of every error Conveyor raises on purpose."""

    status = 500
    title = "Internal error"

    def __init__(
        self, detail: str | None = None, *, errors: list[dict[str, Any]] | None = None
    ) -> None:
        detail = detail or self.__doc__ or self.title
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class InvalidRequestError(ConveyorError):
    """The request is well-formed but its content is not acceptable."""

    status = 422
    title = "Unprocessable content"


class BadRequestError(ConveyorError):
    """The request cannot be parsed (malformed JSON, a bad cursor)."""

    status = 400
    title = "Bad request"


class NotFoundError(ConveyorError):
    """The resource does not exist, or the caller may not see it."""

    status = 404
    title = "Not found"


class ConflictError(ConveyorError):
    """The request conflicts with the current state (a concurrent idempotent request)."""

    status = 409
    title = "Conflict"


class AuthenticationError(ConveyorError):
    """Missing, malformed, expired or foreign credentials."""

    status = 401
    title = "Unauthorized"


class PermissionDeniedError(ConveyorError):
    """The caller is known but may not do this."""

    status = 403
    title = "Forbidden"


class PayloadTooLargeError(ConveyorError):
    """The request body is larger than the configured limit."""

    status = 413
    title = "Content too large"


class JobCancelledError(ConveyorError):
    """Raised inside a running job when its cancellation was requested."""


class PermanentJobError(ConveyorError):
    """A job function raises this to fail at once, without retries."""


class TransientError(ConveyorError):
    """A temporary failure (timeout, lock, unavailable service); worth retrying."""

    status = 503
    title = "Service unavailable"
