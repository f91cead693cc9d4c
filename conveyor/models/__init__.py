"""SQLAlchemy 2 tables: users and what signs them in, jobs and job events, paused queues,
workers, notifications."""

from __future__ import annotations

from conveyor.models.auth import (
    ApiKey,
    AuditEvent,
    AuthSession,
    Identity,
    OneTimeToken,
    RecoveryCode,
    RefreshToken,
    Scope,
    TokenPurpose,
)
from conveyor.models.base import Base
from conveyor.models.job import Job, JobEvent, JobEventKind, JobStatus
from conveyor.models.notification import (
    BouncedAddress,
    Delivery,
    DeliveryStatus,
    Notification,
    Subscription,
)
from conveyor.models.queue import QueuePause
from conveyor.models.user import Role, User
from conveyor.models.worker import Worker

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuthSession",
    "Base",
    "BouncedAddress",
    "Delivery",
    "DeliveryStatus",
    "Identity",
    "Job",
    "JobEvent",
    "JobEventKind",
    "JobStatus",
    "Notification",
    "OneTimeToken",
    "QueuePause",
    "RecoveryCode",
    "RefreshToken",
    "Role",
    "Scope",
    "Subscription",
    "TokenPurpose",
    "User",
    "Worker",
]
