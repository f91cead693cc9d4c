"""SQLAlchemy 2 tables: users, jobs and job events."""

from __future__ import annotations

from conveyor.models.base import Base
from conveyor.models.job import Job, JobEvent, JobEventKind, JobStatus
from conveyor.models.user import Role, User

__all__ = ["Base", "Job", "JobEvent", "JobEventKind", "JobStatus", "Role", "User"]
