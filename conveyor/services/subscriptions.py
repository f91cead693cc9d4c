"""Subscriptions: each recipient's opt-ins and opt-outs per topic (a notification kind, or
`*` for all) and channel (or `*`). With no choice recorded, a recipient is opted in."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.ids import uuid7
from conveyor.models import Subscription
from conveyor.models.base import utcnow
from conveyor.notifications.unsubscribe import OptOut

ANY = "*"


def user_subscriber(user_id: uuid.UUID) -> str:
    return f"user:{user_id}"


def address_subscriber(channel: str, address: str) -> str:
    """An address that has no account (email addresses compare case-insensitively)."""
    return f"address:{channel}:{address.lower() if channel == 'email' else address}"


@dataclass(frozen=True)
class Choice:
    topic: str
    channel: str
    opted_in: bool


@dataclass(frozen=True)
class Preferences:
    """A subscriber's choices; the most specific one decides."""

    choices: dict[tuple[str, str], bool]

    def opted_in(self, topic: str, channel: str) -> bool:
        for key in ((topic, channel), (topic, ANY), (ANY, channel), (ANY, ANY)):
            if key in self.choices:
                return self.choices[key]
        return True

    def explicitly_in(self, topic: str, channel: str) -> bool:
        """Opted in by a choice of their own (not by default)."""
        for key in ((topic, channel), (topic, ANY), (ANY, channel)):
            if key in self.choices:
                return self.choices[key]
        return False


def preferences(session: Session, subscriber: str) -> Preferences:
    rows = session.scalars(select(Subscription).where(Subscription.subscriber == subscriber))
    return Preferences({(row.topic, row.channel): row.opted_in for row in rows})


def list_for_user(db: sessionmaker[Session], user_id: uuid.UUID) -> list[Choice]:
    with db() as session:
        rows = session.scalars(
            select(Subscription)
            .where(Subscription.subscriber == user_subscriber(user_id))
            .order_by(Subscription.topic, Subscription.channel)
        )
        return [Choice(row.topic, row.channel, row.opted_in) for row in rows]


def replace_for_user(
    db: sessionmaker[Session], user_id: uuid.UUID, choices: Sequence[Choice]
) -> list[Choice]:
    """Replace all of a user's choices with `choices` (one per topic and channel)."""
    subscriber = user_subscriber(user_id)
    now = utcnow()
    with transaction(db) as session:
        session.execute(delete(Subscription).where(Subscription.subscriber == subscriber))
        session.add_all(
            Subscription(
                id=uuid7(),
                subscriber=subscriber,
                user_id=user_id,
                topic=c.topic,
                channel=c.channel,
                opted_in=c.opted_in,
                updated_at=now,
            )
            for c in choices
        )
    return list_for_user(db, user_id)


def opt_out(db: sessionmaker[Session], opt_out: OptOut) -> None:
    """Record an opt-out (an unsubscribe link); doing it twice changes nothing."""
    user_id = None
    if opt_out.subscriber.startswith("user:"):
        user_id = uuid.UUID(opt_out.subscriber.removeprefix("user:"))
    for _ in range(2):  # a concurrent twin may insert first: then update its row
        try:
            with transaction(db) as session:
                row = session.scalars(
                    select(Subscription).where(
                        Subscription.subscriber == opt_out.subscriber,
                        Subscription.topic == opt_out.topic,
                        Subscription.channel == opt_out.channel,
                    )
                ).first()
                if row is None:
                    session.add(
                        Subscription(
                            id=uuid7(),
                            subscriber=opt_out.subscriber,
                            user_id=user_id,
                            topic=opt_out.topic,
                            channel=opt_out.channel,
                            opted_in=False,
                            updated_at=utcnow(),
                        )
                    )
                else:
                    row.opted_in = False
                    row.updated_at = utcnow()
            return
        except IntegrityError:
            continue
