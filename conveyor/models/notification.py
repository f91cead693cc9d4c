"""Notifications, their deliveries (one per recipient and channel) and subscriptions."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.ids import uuid7
from conveyor.models.base import Base, JSONType, UTCDateTime, utcnow


class DeliveryStatus(enum.StrEnum):
    """Where one delivery is. The only place these names are written."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"


#: Final states: nothing sends a delivery in one of these.
DELIVERY_FINISHED = frozenset(
    {DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SUPPRESSED}
)


def _in(statuses: tuple[DeliveryStatus, ...]) -> str:
    return "status IN (" + ", ".join(f"'{s.value}'" for s in statuses) + ")"


class Notification(Base):
    """One request to notify recipients of something of a kind (`welcome`), with its context."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_owner_id_id", "owner_id", "id"),
        Index(
            "uq_notifications_owner_id_idempotency_key",
            "owner_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    kind: Mapped[str] = mapped_column(String(100))
    #: Who created it (and owns its delivery jobs).
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    context: Mapped[dict[str, Any]] = mapped_column(JSONType)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Of a sensitive kind: its context holds secrets, erased once every delivery is settled.
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    #: When its context was erased (set to `{}`); a delivery retried after that cannot render.
    context_erased_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Delivery(Base):
    """One message of a notification: to one recipient, over one channel."""

    __tablename__ = "deliveries"
    __table_args__ = (
        CheckConstraint(_in(tuple(DeliveryStatus)), name="status"),
        Index("ix_deliveries_notification_id_id", "notification_id", "id"),
        Index("ix_deliveries_status_id", "status", "id"),
        Index("ix_deliveries_digest_id", "digest_id"),
        # A job's deliveries: found when it ends (or is deleted, for the foreign key).
        Index("ix_deliveries_job_id", "job_id"),
        # An open digest of a recipient is looked up by its channel and address.
        Index("ix_deliveries_channel_address", "channel", "address"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    notification_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("notifications.id", ondelete="CASCADE")
    )
    #: The recipient, when it is a user (else only `address` says who).
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    channel: Mapped[str] = mapped_column(String(20))
    #: Email address, webhook URL, phone number or device token.
    address: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING.value)
    #: Attempts that tried to send (a delivery claimed by a job attempt counts one).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The job attempt that holds (or last held) the delivery in `sending`.
    claimed_attempt: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    provider: Mapped[str | None] = mapped_column(String(50), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(500), nullable=True)
    #: The `notifications.deliver` job that sends it (none for a suppressed delivery).
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
    )
    #: Of a digest kind: the delivery whose message carries this one too (it has no job).
    digest_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("deliveries.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Subscription(Base):
    """A recipient's choice for a topic (a notification kind, or `*`) and a channel (or `*`).

    `subscriber` is `user:<id>` for a user, `address:<address>` for an address that
    unsubscribed through a link (it has no account)."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("subscriber", "topic", "channel"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    subscriber: Mapped[str] = mapped_column(String(2100))
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=True
    )
    topic: Mapped[str] = mapped_column(String(100))
    channel: Mapped[str] = mapped_column(String(20))
    opted_in: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class BouncedAddress(Base):
    """An address that a provider rejected for good (an SMTP 5xx on RCPT): later deliveries
    to it are `suppressed`, not sent, until an admin clears it."""

    __tablename__ = "bounced_addresses"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    channel: Mapped[str] = mapped_column(String(20))
    #: As deliveries store it (an email address in lower case).
    address: Mapped[str] = mapped_column(String(2048))
    #: What the provider answered.
    reason: Mapped[str] = mapped_column(Text)
    #: The delivery whose send bounced (none once it is deleted).
    delivery_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("deliveries.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


notifications_t = cast(Table, Notification.__table__)
deliveries_t = cast(Table, Delivery.__table__)
subscriptions_t = cast(Table, Subscription.__table__)
bounced_t = cast(Table, BouncedAddress.__table__)
