"""Live worker processes, each recorded by its own heartbeat (the worker registry)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import Index, Integer, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.models.base import Base, JSONType, UTCDateTime, utcnow


class Worker(Base):
    """One worker process: upserted by its heartbeat every few seconds, deleted when it
    stops cleanly; a row whose heartbeat is older than the worker timeout is a dead process."""

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_last_heartbeat_at", "last_heartbeat_at"),)

    #: Random per process (a pid is reused, a host name shared by containers).
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[Any]] = mapped_column(JSONType)
    threads: Mapped[int] = mapped_column(Integer)
    jobs_in_hand: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


workers_t = cast(Table, Worker.__table__)
