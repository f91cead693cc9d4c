"""The notifications pool as the dashboard sees it: the recent deliveries counted by channel,
provider and status. Bounded reads: a range of the time-ordered primary key (ids are
UUIDv7, so "created in the last hour" is `id >= the first id of that hour`), and at most
`MAX_COUNTED` rows of it, the newest; never a count over the whole table."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.ids import first_uuid7_at
from conveyor.models.base import utcnow
from conveyor.models.notification import DeliveryStatus, deliveries_t

#: The most deliveries a summary counts (the newest of the window).
MAX_COUNTED = 10_000
#: Statuses shown as columns, in this order; `pending` includes `sending`.
SHOWN = (
    DeliveryStatus.SENT,
    DeliveryStatus.FAILED,
    DeliveryStatus.SUPPRESSED,
    DeliveryStatus.PENDING,
)


@dataclass
class DeliveryCounts:
    """Deliveries of one channel through one provider (None: not sent through one yet), by
    status."""

    channel: str
    provider: str | None
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    def count(self, status: str) -> int:
        return self.by_status.get(status, 0)


@dataclass(frozen=True)
class DeliverySummary:
    """The deliveries created since `since`, counted (at most `MAX_COUNTED`, the newest)."""

    since: dt.datetime
    rows: list[DeliveryCounts]
    capped: bool  #: as many as `MAX_COUNTED` were counted: the window may hold more

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    def count(self, status: str) -> int:
        return sum(r.count(status) for r in self.rows)


def summary(
    db: sessionmaker[Session],
    *,
    window: dt.timedelta = dt.timedelta(hours=1),
    now: dt.datetime | None = None,
    limit: int = MAX_COUNTED,
    timeout_seconds: float | None = 5.0,
) -> DeliverySummary:
    """The deliveries created within `window` (the newest `limit` of them) by channel,
    provider and status; `sending` counts as `pending`."""
    since = (now or utcnow()) - window
    recent = (
        select(deliveries_t.c.channel, deliveries_t.c.provider, deliveries_t.c.status)
        .where(deliveries_t.c.id >= first_uuid7_at(since))
        .order_by(deliveries_t.c.id.desc())
        .limit(limit)
        .subquery()
    )
    found: dict[tuple[str, str | None], DeliveryCounts] = {}
    counted = 0
    with transaction(db) as session:  # a transaction: `SET LOCAL` holds until its end
        if timeout_seconds is not None and session.get_bind().dialect.name == "postgresql":
            session.execute(
                select(func.set_config("statement_timeout", f"{int(timeout_seconds * 1000)}", True))
            )
        rows = session.execute(
            select(recent.c.channel, recent.c.provider, recent.c.status, func.count()).group_by(
                recent.c.channel, recent.c.provider, recent.c.status
            )
        )
        for channel, provider, status, n in rows:
            entry = found.setdefault((channel, provider), DeliveryCounts(channel, provider))
            shown = DeliveryStatus.PENDING.value if status == DeliveryStatus.SENDING else status
            entry.by_status[shown] = entry.by_status.get(shown, 0) + int(n)
            counted += int(n)
    ordered = sorted(found.values(), key=lambda r: (r.channel, r.provider or ""))
    return DeliverySummary(since, ordered, capped=counted >= limit)
