"""Paused queues: while a queue has a row here, workers take none of its jobs."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import cast

from sqlalchemy import ColumnElement, Exists, String, Table, Uuid, exists
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.models.base import Base, UTCDateTime, utcnow


class QueuePause(Base):
    """A paused queue. Submissions are still accepted; a worker's claim skips the queue's
    jobs (one primary-key probe), which wait, unpublished, until the row is deleted."""

    __tablename__ = "queue_pauses"

    queue: Mapped[str] = mapped_column(String(100), primary_key=True)
    paused_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Who paused it: no foreign key, as in the audit log (the pause outlives its user), and
    #: None when it was paused from the command line.
    paused_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True, default=None)
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True, default=None)


queue_pauses_t = cast(Table, QueuePause.__table__)


def is_paused(queue: ColumnElement[str]) -> Exists:
    """`queue` (a job's queue column) is paused: one probe of the primary key."""
    return exists().where(queue_pauses_t.c.queue == queue)
