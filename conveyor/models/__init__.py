"""SQLAlchemy 2 tables: users, jobs and job events, workers, notifications."""

from __future__ import annotations

from conveyor.models.base import Base
from conveyor.models.job import Job, JobEvent, JobEventKind, JobStatus
from conveyor.models.notification import (
    BouncedAddress,
    Delivery,
    DeliveryStatus,
    Notification,
    Subscription,
)
from conveyor.models.user import Role, User
from conveyor.models.worker import Worker

__all__ = [
    "Base",
    "BouncedAddress",
    "Delivery",
    "DeliveryStatus",
    "Job",
    "JobEvent",
    "JobEventKind",
    "JobStatus",
    "Notification",
    "Role",
    "Subscription",
    "User",
    "Worker",
]
