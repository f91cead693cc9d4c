"""Users: who owns jobs and what they may see."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import Boolean, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.ids import uuid7
from conveyor.models.base import Base, UTCDateTime, utcnow


class Role(enum.StrEnum):
    """An admin sees every job; a member only their own."""

    ADMIN = "admin"
    MEMBER = "member"


class User(Base):
    """An account that holds API tokens and owns jobs."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[str] = mapped_column(String(20), default=Role.MEMBER.value)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
