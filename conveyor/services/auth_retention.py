"""Retention of the auth service: the hourly purge of expired single-use and refresh tokens,
ended sessions and used recovery codes, and its submission (once an hour across processes)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.models import AuthSession, OneTimeToken, RecoveryCode, RefreshToken
from conveyor.models.base import utcnow
from conveyor.services.accounts import system_owner
from conveyor.services.submissions import Submissions

PURGE_JOB = "auth.purge_expired"


def queue_purge(db: sessionmaker[Session], submissions: Submissions, now: dt.datetime) -> bool:
    """Submit the purge of the hour of `now`, keyed by that hour: of every web process's
    sweeper asking, one creates it. Whether this call did."""
    new = submissions.build(
        PURGE_JOB,
        {},
        owner_id=system_owner(db),
        idempotency_key=f"{PURGE_JOB}:{now:%Y-%m-%dT%H}",
    )
    return submissions.submit(new).created


#: Rows deleted per statement, so no purge holds long locks.
PURGE_BATCH = 1000
#: Expired single-use and refresh tokens are kept this long (to tell "expired" from
#: "unknown", and to recognise a refresh token's reuse); ended sessions and used recovery
#: codes this long (the user's list of recent sessions).
TOKEN_GRACE = dt.timedelta(days=1)
ENDED_GRACE = dt.timedelta(days=30)


def purge_expired(db: sessionmaker[Session]) -> dict[str, int]:
    """Delete what the auth service no longer needs, in batches; how many rows of each."""
    now = utcnow()
    targets: list[tuple[type[OneTimeToken | RefreshToken | RecoveryCode | AuthSession], Any]] = [
        (OneTimeToken, OneTimeToken.expires_at < now - TOKEN_GRACE),
        (RefreshToken, RefreshToken.expires_at < now - TOKEN_GRACE),
        (RecoveryCode, RecoveryCode.used_at < now - ENDED_GRACE),
        (
            AuthSession,
            or_(
                AuthSession.revoked_at < now - ENDED_GRACE,
                AuthSession.expires_at < now - ENDED_GRACE,
            ),
        ),
    ]
    counts: dict[str, int] = {}
    for model, condition in targets:
        counts[model.__tablename__] = 0
        while True:
            with transaction(db) as session:
                ids = list(session.scalars(select(model.id).where(condition).limit(PURGE_BATCH)))
                if ids and model is AuthSession:  # their refresh tokens first (SQLite: no cascade)
                    session.execute(delete(RefreshToken).where(RefreshToken.session_id.in_(ids)))
                if ids:
                    session.execute(delete(model).where(model.id.in_(ids)))
            counts[model.__tablename__] += len(ids)
            if len(ids) < PURGE_BATCH:
                break
    return counts
