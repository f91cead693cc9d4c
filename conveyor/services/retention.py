"""Retention: finished jobs, and their events, are deleted once they are old enough.

A pass deletes in batches (each its own short transaction) so that a large backlog never
holds locks for long; one process at a time does it, under a PostgreSQL advisory lock.
Events go with their job (`ON DELETE CASCADE`); a child whose parent is deleted keeps running
with no parent (`ON DELETE SET NULL`).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.models.base import utcnow
from conveyor.models.job import FINISHED_ORDER, jobs_t
from conveyor.services.jobs import rowcount

logger = logging.getLogger(__name__)

#: Jobs deleted per transaction.
BATCH = 500
#: Batches per pass at most; the next pass goes on (a backlog never starves the sweeper).
MAX_BATCHES = 20
#: The advisory lock that makes one process at a time delete ("conveyor retention").
LOCK_ID = 0x636F6E7665796F72 & 0x7FFF_FFFF_FFFF_FFFF


def cutoff(days: float, now: dt.datetime | None = None) -> dt.datetime | None:
    """Jobs finished before this time are deleted; None when `days` keeps them forever."""
    if days <= 0:
        return None
    return (now or utcnow()) - dt.timedelta(days=days)


def expired_query(before: dt.datetime, limit: int) -> Select[tuple[uuid.UUID]]:
    """The ids of up to `limit` jobs that finished before `before`, oldest first (on the
    partial index `ix_jobs_finished_finished_at`)."""
    return (
        select(jobs_t.c.id)
        .where(jobs_t.c.status.in_([s.value for s in FINISHED_ORDER]))
        .where(jobs_t.c.finished_at < before)
        .order_by(jobs_t.c.finished_at)
        .limit(limit)
    )


def delete_batch(db: sessionmaker[Session], before: dt.datetime, *, limit: int = BATCH) -> int:
    """Delete up to `limit` jobs that finished before `before` (oldest first), with their
    events; how many. 0 as well when another process holds the retention lock."""
    old = expired_query(before, limit)
    with transaction(db) as session:
        if session.get_bind().dialect.name == "postgresql":
            if not session.scalar(select(func.pg_try_advisory_xact_lock(LOCK_ID))):
                return 0  # another process is deleting
            old = old.with_for_update(skip_locked=True)
        ids = list(session.scalars(old))
        if not ids:
            return 0
        return rowcount(session.execute(delete(jobs_t).where(jobs_t.c.id.in_(ids))))


def purge_expired(
    db: sessionmaker[Session], days: float, *, batch: int = BATCH, max_batches: int = MAX_BATCHES
) -> int:
    """One retention pass: delete the jobs finished more than `days` ago, `batch` at a time,
    at most `max_batches` times; how many were deleted."""
    before = cutoff(days)
    if before is None:
        return 0
    deleted = 0
    for _ in range(max_batches):
        n = delete_batch(db, before, limit=batch)
        deleted += n
        if n < batch:
            break
    if deleted:
        logger.info("retention: deleted %d job(s) finished before %s", deleted, before.isoformat())
    return deleted
