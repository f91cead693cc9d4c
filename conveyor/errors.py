"""The error hierarchy; the HTTP edge maps it to application/problem+json."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import psycopg
import redis.exceptions
import sqlalchemy.exc
from pydantic import ValidationError

#: The longest `RetryLater` delay that is represented as asked (about 30 years).
MAX_RETRY_DELAY_SECONDS = 1e9


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
        #: Headers of the HTTP answer (`Retry-After`...).
        self.headers: dict[str, str] = {}


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


class InvalidTokenError(AuthenticationError):
    """A bearer token was sent but is refused: forged, foreign, expired or malformed."""


class PermissionDeniedError(ConveyorError):
    """The caller is known but may not do this."""

    status = 403
    title = "Forbidden"


class TooManyRequestsError(ConveyorError):
    """The caller holds as many of a limited resource as it may; retry after a while."""

    status = 429
    title = "Too many requests"

    def __init__(
        self, detail: str, *, retry_after: int, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(detail, errors=errors)
        self.headers["Retry-After"] = str(retry_after)


class ConfigurationError(ConveyorError):
    """A setting is missing or wrong; the process cannot start."""


class JobCancelledError(ConveyorError):
    """Raised inside a running job when its cancellation was requested."""


class AttemptLostError(ConveyorError):
    """Raised inside a running job whose attempt no longer holds the job: its lease was taken
    back, or the job ended or runs elsewhere. The attempt stops and records nothing (the
    reconciler, or the attempt that holds the job, decides); it is not a cancel."""


class WorkerStoppingError(ConveyorError):
    """Raised inside a running job still running when its worker's drain time ran out: the
    job was handed back (it runs again elsewhere, neither a failure nor a lost worker), so
    the attempt stops and records nothing."""


class JobTimeLimitError(ConveyorError):
    """Raised inside a running job that ran past its time limit."""


class PermanentJobError(ConveyorError):
    """A job function raises this to fail at once, without retries."""


class DestinationRefusedError(PermanentJobError):
    """An outbound request was refused before connecting: its URL is not http(s), or its host
    is not a public address and no allow list entry permits it."""


class PermanentDeliveryError(PermanentJobError):
    """A notification cannot be delivered and retrying will not help: a provider's 4xx (other
    than 408 and 429), a refused address, a bad recipient, a template that does not render."""


class BouncedAddressError(PermanentDeliveryError):
    """The provider rejected the recipient's address for good (an SMTP 5xx answer to RCPT):
    the address goes on the bounce list, and later deliveries to it are suppressed."""


class RetryLater(ConveyorError):
    """A job function raises this to run again after `delay` (a provider's Retry-After).

    It still counts as a failed attempt, so a job told to wait for ever ends once its retries
    are spent; the delay is capped by the job type's `max_backoff`. `deferred=True` is for a
    wait Conveyor's own code chose (a provider's rate limit in this pool): that attempt is not
    the job's failure and uses up no retry (it counts as a hand-back), up to
    `services.outcomes.MAX_DEFERRALS` of them.
    """

    def __init__(
        self, delay: float | dt.timedelta, detail: str | None = None, *, deferred: bool = False
    ) -> None:
        self.deferred = deferred
        seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)
        if math.isnan(seconds) or seconds < 0:
            seconds = 0.0
        #: How long to wait; the job type's `max_backoff` caps it (so does this, for `inf`).
        self.delay = dt.timedelta(seconds=min(seconds, MAX_RETRY_DELAY_SECONDS))
        super().__init__(detail or f"retry requested in {self.delay.total_seconds():g}s")


class TransientError(ConveyorError):
    """A temporary failure (timeout, lock, unavailable service); worth retrying."""

    status = 503
    title = "Service unavailable"


class InfrastructureError(TransientError):
    """A service Conveyor runs on (the database, the broker, Redis) failed: not the job's fault."""


class BrokerUnavailableError(InfrastructureError):
    """The broker did not take or confirm a message (unreachable, blocked or refusing)."""


class OutboundHttpError(TransientError):
    """An outbound HTTP request got no answer (refused, reset, timed out, too large)."""


class ProviderUnavailableError(TransientError):
    """A provider or webhook receiver answered with a temporary failure (408, 429, 5xx)."""


class ProviderResponseError(ConveyorError):
    """An identity provider answered with something unusable (a bad discovery document, key
    set or token response): a fault of the provider or of its configuration, not the user's."""

    status = 502
    title = "Bad gateway"


class UnknownResourceError(ConveyorError):
    """A job asked for a resource its pool did not register."""


#: SQLSTATEs that say the server ended or refused the session, not that a statement failed:
#: shutdown or crash (57P01, 57P02), starting up or shutting down (57P03), no free connection
#: slot (53300). Class 08 (connection exceptions) is matched by its prefix.
_DISCONNECT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_infrastructure_error(exc: BaseException) -> bool:
    """Whether `exc` says that a service Conveyor runs on (the database, Redis) failed or
    could not be reached, rather than that the code which called it failed.

    That is: `InfrastructureError`; a SQLAlchemy error that invalidated its connection, or
    that wraps one of the following; a psycopg error with no SQLSTATE (the connection failed,
    was lost or is closed: errors raised by the client library itself) or a SQLSTATE of a
    lost session (class 08, shutdown, crash, too many connections); a Redis connection
    error or time-out. A statement's own error (a constraint, a syntax error, a deadlock, a
    statement time-out) is not. The broker's errors are named by the worker layer, which
    knows the broker's library (see `workers.lifecycle`).
    """
    if isinstance(exc, InfrastructureError):
        return True
    if isinstance(exc, sqlalchemy.exc.DisconnectionError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _DISCONNECT_SQLSTATES
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def field_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Pydantic's errors as `{field, message}` items, with dotted paths under `prefix`."""
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"])
        field = f"{prefix}.{path}" if prefix and path else (prefix or path or "body")
        out.append({"field": field, "message": error["msg"]})
    return out
