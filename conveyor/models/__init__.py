"""SQLAlchemy 2 tables: users, jobs and job events, workers."""

from __future__ import annotations

from conveyor.models.base import Base
from conveyor.models.job import Job, JobEvent, JobEventKind, JobStatus
from conveyor.models.user import Role, User
from conveyor.models.worker import Worker

__all__ = ["Base", "Job", "JobEvent", "JobEventKind", "JobStatus", "Role", "User", "Worker"]
