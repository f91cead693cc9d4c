"""The audit log: security events (sign-ins and their failures, lockouts, password and role
changes, API keys, MFA), who acted, on whom, from where. Written in the transaction of the
change it records, so the log and the change cannot disagree; never updated."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from conveyor.ids import uuid7
from conveyor.models import AuditEvent
from conveyor.models.base import utcnow

#: The longest user agent kept (the rest is cut).
MAX_USER_AGENT = 300


@dataclass(frozen=True)
class Client:
    """Where a request came from: its address and user agent, for the log and the limits."""

    ip: str | None = None
    user_agent: str | None = None


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
