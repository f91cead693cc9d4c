"""Pausing and resuming a queue: its workers take none of its jobs, submissions still land.

The pause is a row in `queue_pauses`, so it holds on every broker and for every worker at
once. A worker's claim skips a paused queue's jobs; the message it received is acknowledged
and the job "parked" (left waiting, unpublished: `services.runs.park`), and the outbox
publishes none of them. A resume deletes the row and publishes the parked jobs at once; the
outbox sweep is the fallback. A job already running when the pause lands finishes.

Operators and admins pause and resume; each is written to the audit log (`queue_paused`,
`queue_resumed`) in the transaction that makes it.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import InvalidRequestError, NotFoundError
from conveyor.models import JobStatus, QueuePause, User
from conveyor.models.base import utcnow
from conveyor.models.job import UNSTARTED, jobs_t
from conveyor.models.queue import queue_pauses_t
from conveyor.registry import Registry
from conveyor.services import audit
from conveyor.services.jobs import Enqueuer
from conveyor.services.operations import require_operator, who
from conveyor.services.outbox import publish_parked

logger = logging.getLogger(__name__)

#: Parked jobs published per transaction by a resume, and the most it publishes itself (a
#: few seconds' work at most, so an HTTP request ends in time): the outbox sweep publishes
#: the rest within its next pass.
RESUME_BATCH = 500
RESUME_MOST = 10_000
#: The longest reason kept with a pause, and the longest queue name (the columns' sizes).
MAX_REASON = 200
MAX_QUEUE = 100


def _actor_id(by: User) -> uuid.UUID | None:
    """`by`'s id as the audit log and `paused_by` keep it: None for the command line's
    stand-in admin (`cli.operator`, the nil id), which is not a stored user."""
    return None if by.id is None or by.id.int == 0 else by.id


def pause(
    db: sessionmaker[Session],
    queue: str,
    by: User,
    reason: str | None = None,
    *,
    client: audit.Client = audit.NOBODY,
) -> bool:
    """Pause `queue`; False if it was paused already (nothing changes then, the first pause's
    time, author and reason stay). Operators and admins only."""
    require_operator(by)
    if not queue or len(queue) > MAX_QUEUE:
        raise InvalidRequestError(
            f"a queue name has 1 to {MAX_QUEUE} characters",
            errors=[{"field": "queue", "message": f"1 to {MAX_QUEUE} characters"}],
        )
    reason = (reason or "").strip()[:MAX_REASON] or None
    actor_id = _actor_id(by)
    values = {"queue": queue, "paused_at": utcnow(), "paused_by": actor_id, "reason": reason}
    with transaction(db) as session:
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        added = session.scalar(
            insert(queue_pauses_t)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["queue"])
            .returning(queue_pauses_t.c.queue)
        )
        if added is None:
            return False
        audit.record(
            session,
            "queue_paused",
            client=client,
            actor_id=actor_id,
            queue=queue,
            reason=reason,
            by=who(by),
        )
    logger.info("queue %s paused by %s", queue, who(by))
    return True


def resume(
    db: sessionmaker[Session],
    enqueuer: Enqueuer,
    queue: str,
    by: User,
    *,
    client: audit.Client = audit.NOBODY,
) -> int:
    """Resume `queue` and publish its parked jobs; how many were published (0 if it was not
    paused: nothing is recorded then). Jobs past `RESUME_MOST`, or that the broker does not
    take now, are left to the outbox sweep. Operators and admins only."""
    require_operator(by)
    with transaction(db) as session:
        removed = session.scalar(
            delete(queue_pauses_t)
            .where(queue_pauses_t.c.queue == queue)
            .returning(queue_pauses_t.c.paused_at)
        )
        if removed is None:
            return 0
        audit.record(
            session,
            "queue_resumed",
            client=client,
            actor_id=_actor_id(by),
            queue=queue,
            paused_for_seconds=round((utcnow() - removed).total_seconds(), 3),
            by=who(by),
        )
    published = publish_parked(db, enqueuer, queue, limit=RESUME_BATCH, most=RESUME_MOST)
    logger.info("queue %s resumed by %s; %d waiting job(s) published", queue, who(by), published)
    return published


def paused(db: sessionmaker[Session]) -> dict[str, QueuePause]:
    """The paused queues, by name."""
    with db() as session:
        return {p.queue: p for p in session.scalars(select(QueuePause).order_by(QueuePause.queue))}


def check_known(db: sessionmaker[Session], registry: Registry, queue: str) -> None:
    """NotFoundError unless a job type of `registry` uses `queue`, it holds jobs not finished,
    or it is paused (so the pause of a queue gone from the code can still be lifted)."""
    if any(job_type.queue == queue for job_type in registry):
        return
    with db() as session:
        if session.get(QueuePause, queue) is not None:
            return
        held = select(jobs_t.c.id).where(
            jobs_t.c.queue == queue, jobs_t.c.status.in_((*UNSTARTED, JobStatus.RUNNING))
        )
        if session.scalar(held.limit(1)) is not None:
            return
    raise NotFoundError(f"no queue {queue!r}: no job type uses it and it holds no unfinished jobs")
