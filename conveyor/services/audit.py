"""The audit log: security events (sign-ins and their failures, lockouts, password and role
changes, API keys, MFA), who acted, on whom, from where. Written in the transaction of the
change it records, so the log and the change cannot disagree; never updated. Admins read it
newest first (`list_events`)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.ids import uuid7
from conveyor.models import AuditEvent
from conveyor.models.base import utcnow
from conveyor.services.cursors import Cursors, Scope

#: The longest user agent kept (the rest is cut).
MAX_USER_AGENT = 300


@dataclass(frozen=True)
class Client:
    """Where a request came from: its address and user agent, for the log and the limits, and
    the API key it was made with (the log names it as `via_api_key`)."""

    ip: str | None = None
    user_agent: str | None = None
    api_key_id: uuid.UUID | None = None


#: Conveyor itself, or a command run on the server.
NOBODY = Client()


def record(
    session: Session,
    action: str,
    *,
    client: Client = NOBODY,
    actor_id: uuid.UUID | None = None,
    subject_id: uuid.UUID | None = None,
    **details: Any,
) -> AuditEvent:
    """Add an audit event to `session` (committed with the rest of its transaction)."""
    if client.api_key_id is not None:
        details = {**details, "via_api_key": str(client.api_key_id)}
    event = AuditEvent(
        id=uuid7(),
        at=utcnow(),
        action=action,
        actor_id=actor_id,
        subject_id=subject_id,
        ip=client.ip,
        user_agent=(client.user_agent or None) and client.user_agent[:MAX_USER_AGENT],
        details=details,
    )
    session.add(event)
    return event


def record_apart(
    db: sessionmaker[Session],
    action: str,
    *,
    client: Client = NOBODY,
    actor_id: uuid.UUID | None = None,
    subject_id: uuid.UUID | None = None,
    **details: Any,
) -> None:
    """Record an audit event in a transaction of its own: for an action done over several
    transactions (a bulk action's batches), once it is done and its count known."""
    with transaction(db) as session:
        record(session, action, client=client, actor_id=actor_id, subject_id=subject_id, **details)


def actor_id_of(user: Any) -> uuid.UUID | None:
    """A user's id as the audit log keeps it: None for the command line's stand-in operator
    (the nil id), which is no stored user."""
    user_id: uuid.UUID | None = user.id
    return None if user_id is None or user_id.int == 0 else user_id


@dataclass(frozen=True)
class EventPage:
    items: list[AuditEvent]
    next_cursor: str | None


def list_events(
    db: sessionmaker[Session],
    cursors: Cursors,
    *,
    actions: Sequence[str] = (),
    subject_id: uuid.UUID | None = None,
    actor_id: uuid.UUID | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> EventPage:
    """Audit events newest first, by keyset pagination on the time-ordered id: of these
    actions, about this subject, by this actor, at or after `since` and before `until`."""
    scope = Scope.of(
        actions,
        [
            "audit",
            f"subject:{subject_id or ''}",
            f"actor:{actor_id or ''}",
            f"since:{since.isoformat() if since else ''}",
            f"until:{until.isoformat() if until else ''}",
        ],
        None,
    )
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
    if actions:
        query = query.where(AuditEvent.action.in_(actions))
    if subject_id is not None:
        query = query.where(AuditEvent.subject_id == subject_id)
    if actor_id is not None:
        query = query.where(AuditEvent.actor_id == actor_id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    if cursor is not None:
        query = query.where(AuditEvent.id < cursors.read(cursor, scope))
    with db() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(rows, cursors.issue(rows[-1].id, scope) if more else None)
