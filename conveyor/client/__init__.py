"""The Python client of Conveyor's HTTP API: `Client` (blocking) and `AsyncClient` (asyncio).

    from conveyor.client import Client

    with Client("http://127.0.0.1:8000", token) as client:
        job = client.submit("system.sleep", {"seconds": 2})
        done = client.wait(job, timeout=60)

It imports nothing of the server: no settings are read, no broker or database is touched.
"""

from __future__ import annotations

from conveyor.client.aio import AsyncClient
from conveyor.client.errors import (
    ApiError,
    BadRequestError,
    ClientError,
    ConflictError,
    FieldError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    UnauthorizedError,
    WaitTimeoutError,
)
from conveyor.client.models import (
    Delivery,
    DeliveryPage,
    Event,
    Job,
    JobError,
    JobStatus,
    JobType,
    Notification,
    Page,
)
from conveyor.client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequestError",
    "Client",
    "ClientError",
    "ConflictError",
    "Delivery",
    "DeliveryPage",
    "Event",
    "FieldError",
    "ForbiddenError",
    "InvalidRequestError",
    "Job",
    "JobError",
    "JobStatus",
    "JobType",
    "NotFoundError",
    "Notification",
    "Page",
    "PayloadTooLargeError",
    "ProtocolError",
    "RateLimitedError",
    "ServerError",
    "ServiceUnavailableError",
    "TransportError",
    "UnauthorizedError",
    "WaitTimeoutError",
]
