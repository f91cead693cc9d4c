"""The notifications pool's figures: the deliveries of a recent window by channel, provider
and status, read as a range of the time-ordered ids; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import make_engine, make_sessionmaker, transaction
from conveyor.ids import first_uuid7_at, uuid7
from conveyor.models import Delivery, Notification, Role
from conveyor.models.base import utcnow
from conveyor.services import delivery_stats
from conveyor.services.users import create_user


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_db")
        return
    engine = make_engine(sqlite_url, pool_size=5)
    yield make_sessionmaker(engine)
    engine.dispose()


def _id_at(moment: dt.datetime) -> uuid.UUID:
    """A UUIDv7 of the millisecond `moment` (random bits below its time)."""
    return uuid.UUID(int=first_uuid7_at(moment).int | (uuid7().int & ((1 << 80) - 1)))


def _deliveries(
    db: sessionmaker[Session], *rows: tuple[str, str | None, str, dt.timedelta]
) -> None:
    owner = create_user(db, f"{uuid.uuid4().hex}@example.com", Role.ADMIN)
    now = utcnow()
    with transaction(db) as session:
        notification = Notification(kind="welcome", owner_id=owner.id, context={})
        session.add(notification)
        session.flush()
        for channel, provider, status, age in rows:
            session.add(
                Delivery(
                    id=_id_at(now - age),
                    notification_id=notification.id,
                    channel=channel,
                    address="someone@example.com",
                    provider=provider,
                    status=status,
                )
            )


def test_the_summary_counts_the_window_s_deliveries_by_channel_provider_and_status(
    db: sessionmaker[Session],
) -> None:
    minute = dt.timedelta(minutes=1)
    _deliveries(
        db,
        ("email", "smtp", "sent", 1 * minute),
        ("email", "smtp", "sent", 2 * minute),
        ("email", "smtp", "failed", 3 * minute),
        ("email", "smtp", "sent", 2 * 60 * minute),  # before the window
        ("webhook", None, "pending", minute),
        ("webhook", None, "sending", minute),
        ("sms", "twilio", "suppressed", minute),
    )
    found = delivery_stats.summary(db)
    assert [(r.channel, r.provider, r.by_status) for r in found.rows] == [
        ("email", "smtp", {"sent": 2, "failed": 1}),
        ("sms", "twilio", {"suppressed": 1}),
        ("webhook", None, {"pending": 2}),  # sending is shown as pending
    ]
    assert found.total == 6 and found.count("sent") == 2 and not found.capped


def test_the_summary_counts_the_newest_up_to_its_limit_and_says_so(
    db: sessionmaker[Session],
) -> None:
    _deliveries(db, *[("email", "smtp", "sent", dt.timedelta(seconds=s)) for s in range(1, 6)])
    found = delivery_stats.summary(db, limit=3)
    assert found.total == 3 and found.capped
    assert not delivery_stats.summary(db, limit=10).capped
