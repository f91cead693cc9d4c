"""Notifications: create one (a delivery per recipient and channel, each a job), read them,
and the deliveries' lifecycle as the `notifications.deliver` job drives it.

Deliveries that preferences suppress are recorded (`suppressed`) and never sent; critical
kinds bypass preferences. The notification, its deliveries and their jobs are written in one
transaction, so a notification never exists without the jobs that send it. System kinds (the
auth emails) are sent by Conveyor only (`send_system`); the context of a sensitive kind is
never shown, and is erased in the transaction that settles its last delivery.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from conveyor.db import storable_json, transaction
from conveyor.egress import EgressPolicy
from conveyor.errors import (
    DestinationRefusedError,
    InvalidRequestError,
    NotFoundError,
    PermanentDeliveryError,
    PermissionDeniedError,
)
from conveyor.ids import uuid7
from conveyor.models import (
    BouncedAddress,
    Delivery,
    DeliveryStatus,
    Job,
    JobStatus,
    Notification,
    Role,
    User,
)
from conveyor.models.base import utcnow
from conveyor.models.job import jobs_t
from conveyor.models.notification import (
    DELIVERY_FINISHED,
    bounced_t,
    deliveries_t,
    notifications_t,
)
from conveyor.notifications.channels import Outgoing
from conveyor.notifications.email import check_address
from conveyor.notifications.templates import (
    RESERVED,
    Kind,
    RenderError,
    Templates,
    UnknownKindError,
)
from conveyor.notifications.unsubscribe import OptOut, UnsubscribeLinks
from conveyor.services import subscriptions
from conveyor.services.cursors import Cursors, Scope
from conveyor.services.jobs import rowcount
from conveyor.services.outcomes import MAX_DEFERRALS
from conveyor.services.submissions import (
    Submissions,
    check_idempotency_key,
    insert_jobs,
)
from conveyor.services.users import normalize_email

#: The job type that sends one delivery (declared in `conveyor.actors.notifications`).
DELIVER = "notifications.deliver"
#: Why the API refuses a system kind.
SYSTEM_ONLY = "sent by Conveyor only"
#: What API answers show instead of a sensitive notification's context.
REDACTED: dict[str, Any] = {"redacted": True}
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True)
class Recipient:
    """A user (by id), or an address on one channel."""

    user_id: uuid.UUID | None = None
    address: str | None = None
    channel: str | None = None


@dataclass(frozen=True)
class NewNotification:
    """What `POST /v1/notifications` asks for; `channels` None means "by preference"."""

    kind: str
    recipients: Sequence[Recipient]
    context: dict[str, Any] = field(default_factory=dict)
    channels: Sequence[str] | None = None


@dataclass(frozen=True)
class Created:
    notification: Notification
    deliveries: list[Delivery]
    #: False: an earlier notification with the same idempotency key and request.
    created: bool


@dataclass(frozen=True)
class Limits:
    max_recipients: int
    max_context_bytes: int
    #: Where webhooks may go (`CONVEYOR_OUTBOUND_ALLOW_HOSTS`): a URL it refuses is a 422.
    egress: EgressPolicy = field(default_factory=lambda: EgressPolicy.parse([]))


#: What `send_system` accepts: one recipient, a context of up to 64 KiB.
SYSTEM_LIMITS = Limits(max_recipients=1, max_context_bytes=65536)


def _invalid(field_name: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{field_name}: {message}", errors=[{"field": field_name, "message": message}]
    )


def check_address_for(
    channel: str, address: str, field_name: str, egress: EgressPolicy | None = None
) -> str:
    """`address` as a `channel` address (email, http(s) URL, E.164 phone, device token); a
    webhook URL must also be one `egress` lets through (a public address, or allowed)."""
    if channel == "email":
        try:
            return check_address(address)
        except ValueError as exc:
            raise _invalid(field_name, str(exc)) from None
    if channel == "webhook":
        if (
            not re.match(r"^https?://[^\s/?#]+[^\s]*$", address)
            or len(address) > 2048
            or not (address.isascii() and address.isprintable())
        ):
            raise _invalid(
                field_name, "an http:// or https:// URL of at most 2048 printable ASCII characters"
            )
        try:
            (egress or EgressPolicy.parse([])).check_url(address)
        except DestinationRefusedError as exc:
            raise _invalid(field_name, f"not a URL webhooks may reach: {exc.detail}") from None
        return address
    if channel == "sms":
        if not _PHONE.match(address):
            raise _invalid(field_name, "a phone number in E.164 form (+14155550100)")
        return address
    if not (1 <= len(address) <= 2048 and address.isascii() and address.isprintable()):
        raise _invalid(field_name, "a device token of 1 to 2048 printable ASCII characters")
    return address


def _request_hash(new: NewNotification) -> str:
    recipients = [[str(r.user_id or ""), r.address or "", r.channel or ""] for r in new.recipients]
    canonical = json.dumps(
        [new.kind, recipients, new.context, list(new.channels or []), new.channels is None],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate(
    new: NewNotification,
    templates: Templates,
    creator: User,
    limits: Limits,
    *,
    system: bool = False,
) -> Kind:
    """The notification's kind, once the request is acceptable: 422 naming the bad field,
    403 for a recipient the creator may not notify. Members notify themselves and webhook
    URLs; admins anyone and any address. A system kind is refused unless `system` (Conveyor
    itself sends it)."""
    try:
        kind = templates.kind(new.kind)
    except UnknownKindError:
        known = ", ".join(k.name for k in templates.kinds() if not k.system)
        raise _invalid("kind", f"unknown kind; known: {known}") from None
    if kind.system and not system:
        raise _invalid("kind", SYSTEM_ONLY)
    if not new.recipients:
        raise _invalid("recipients", "at least one recipient")
    if len(new.recipients) > limits.max_recipients:
        raise _invalid("recipients", f"at most {limits.max_recipients} recipients")
    if new.channels is not None:
        if not new.channels:
            raise _invalid("channels", "at least one channel, or leave it out (by preference)")
        for i, channel in enumerate(new.channels):
            if channel not in kind.channels:
                raise _invalid(
                    f"channels.{i}", f"kind {kind.name} has templates for: {list(kind.channels)}"
                )
    for key in new.context:
        if key in RESERVED or not key.isidentifier():
            raise _invalid(f"context.{key}", "reserved or not a valid variable name")
    try:
        size = len(storable_json(new.context).encode())
    except ValueError as exc:
        raise _invalid("context", f"cannot be stored: {exc}") from None
    if size > limits.max_context_bytes:
        raise _invalid("context", f"at most {limits.max_context_bytes} bytes of JSON")
    admin = creator.role == Role.ADMIN
    for i, recipient in enumerate(new.recipients):
        where = f"recipients.{i}"
        if (recipient.user_id is None) == (recipient.address is None):
            raise _invalid(where, "give either user_id, or address and channel")
        if recipient.address is not None:
            if recipient.channel not in kind.channels:
                raise _invalid(
                    f"{where}.channel", f"kind {kind.name} has templates for: {list(kind.channels)}"
                )
            check_address_for(
                recipient.channel, recipient.address, f"{where}.address", limits.egress
            )
            if not admin and recipient.channel != "webhook":
                raise PermissionDeniedError(
                    f"{where}: members may notify webhook URLs and themselves only",
                    errors=[{"field": where, "message": "only admins notify other addresses"}],
                )
        elif not admin and recipient.user_id != creator.id:
            raise PermissionDeniedError(
                f"{where}: members may notify themselves only",
                errors=[{"field": f"{where}.user_id", "message": "only admins notify others"}],
            )
    return kind


@dataclass
class _Planned:
    user_id: uuid.UUID | None
    channel: str
    address: str
    status: DeliveryStatus
    last_error: str | None = None


def _plan(session: Session, new: NewNotification, kind: Kind) -> list[_Planned]:
    """One delivery per recipient and channel, each `pending` or `suppressed`."""
    planned: list[_Planned] = []
    seen: set[tuple[str, str]] = set()
    for i, recipient in enumerate(new.recipients):
        if recipient.address is not None and recipient.channel is not None:
            address = (
                recipient.address.lower() if recipient.channel == "email" else recipient.address
            )
            subscriber = subscriptions.address_subscriber(recipient.channel, recipient.address)
            user_id = None
            if recipient.channel == "email":  # a user's address is that user: their choices
                owner = session.scalars(
                    select(User).where(User.email == normalize_email(recipient.address))
                ).first()
                if owner is not None:
                    address, user_id = owner.email, owner.id
                    subscriber = subscriptions.user_subscriber(owner.id)
            prefs = subscriptions.preferences(session, subscriber)
            options: list[tuple[str, str, str | None]] = [(recipient.channel, address, None)]
        else:
            user = session.get(User, recipient.user_id)
            if user is None:
                raise _invalid(f"recipients.{i}.user_id", "no such user")
            prefs = subscriptions.preferences(session, subscriptions.user_subscriber(user.id))
            channels = list(new.channels) if new.channels is not None else None
            if channels is None:  # by preference: the kind's defaults and what they opted into
                channels = [
                    c
                    for c in kind.channels
                    if c in kind.default_channels or prefs.explicitly_in(kind.name, c)
                ]
            unreachable = [c for c in channels if c != "email"]
            if unreachable and new.channels is not None:
                raise _invalid(
                    f"recipients.{i}",
                    f"a user has an email address only; send {unreachable[0]} to an address",
                )
            options = [
                (c, user.email, None if user.active else "the user is deactivated")
                for c in channels
                if c == "email"
            ]
            user_id = user.id
        for channel, address, refusal in options:
            if (channel, address) in seen:
                continue  # the same person twice: one message
            seen.add((channel, address))
            status = DeliveryStatus.PENDING
            error = refusal
            if refusal is not None:
                status = DeliveryStatus.SUPPRESSED
            elif not kind.critical and not prefs.opted_in(kind.name, channel):
                status, error = DeliveryStatus.SUPPRESSED, "the recipient opted out"
            elif (bounce := bounced(session, channel, address)) is not None:
                status, error = DeliveryStatus.SUPPRESSED, bounce
            planned.append(_Planned(user_id, channel, address, status, error))
    return planned


def create(
    db: sessionmaker[Session],
    submissions: Submissions,
    templates: Templates,
    creator: User,
    new: NewNotification,
    limits: Limits,
    *,
    idempotency_key: str | None = None,
    system: bool = False,
) -> Created:
    """Create a notification and its deliveries, and queue a `notifications.deliver` job for
    each one not suppressed, in one transaction (then publish them). With an idempotency
    key already used for the same request, the earlier notification comes back. `system`:
    Conveyor itself sends it, so a system kind is allowed."""
    kind = validate(new, templates, creator, limits, system=system)
    fingerprint = _request_hash(new) if idempotency_key is not None else None
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
        earlier = _keyed(db, creator.id, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier
    try:
        with transaction(db) as session:
            notification = Notification(
                id=uuid7(),
                kind=kind.name,
                owner_id=creator.id,
                context=new.context,
                idempotency_key=idempotency_key,
                request_hash=fingerprint,
                created_at=utcnow(),
                sensitive=kind.sensitive,
            )
            session.add(notification)
            session.flush()
            planned = _plan(session, new, kind)
            now = utcnow()
            deliveries = [
                Delivery(
                    id=uuid7(),
                    notification_id=notification.id,
                    user_id=p.user_id,
                    channel=p.channel,
                    address=p.address,
                    status=p.status.value,
                    attempts=0,
                    claimed_attempt=0,
                    last_error=p.last_error,
                    created_at=now,
                    updated_at=now,
                )
                for p in planned
            ]
            sendable = []
            for delivery in deliveries:
                if delivery.status != DeliveryStatus.PENDING:
                    continue
                digest = (
                    _open_digest(session, creator.id, kind, delivery)
                    if kind.digest_seconds
                    else None
                )
                if digest is not None:
                    delivery.digest_id = digest  # goes out with that one's message
                else:
                    sendable.append(delivery)
            jobs = insert_jobs(
                session,
                [
                    submissions.build(
                        DELIVER,
                        {"delivery_id": str(d.id)},
                        owner_id=creator.id,
                        delay=kind.digest_seconds,
                    )
                    for d in sendable
                ],
            )
            for delivery, job in zip(sendable, jobs, strict=True):
                delivery.job_id = job.id
            session.add_all(deliveries)
            session.flush()
            if kind.sensitive:  # every delivery suppressed already: nothing will send it
                _erase_settled(session, [d.id for d in deliveries])
                session.refresh(notification)
            session.expunge_all()
    except IntegrityError:
        if idempotency_key is None:
            raise
        earlier = _keyed(db, creator.id, idempotency_key, fingerprint)  # a concurrent twin won
        if earlier is None:
            raise
        return earlier
    submissions.publish_written(jobs)
    return Created(notification, deliveries, created=True)


def send_system(
    db: sessionmaker[Session],
    submissions: Submissions,
    templates: Templates,
    user: User,
    kind: str,
    context: dict[str, Any],
    *,
    idempotency_key: str,
) -> Created:
    """Email `user` a notification of a system kind (a verification or reset link, a security
    notice), owned by that user. Critical kinds go out whatever the preferences; the bounce
    list still applies. Idempotent on `idempotency_key` (per user): a retried auth job sends
    once. A kind that is not a system kind is a 422 naming `kind`."""
    try:
        system = templates.kind(kind).system
    except UnknownKindError:
        raise _invalid("kind", "unknown kind") from None
    if not system:
        raise _invalid("kind", "not a system kind: send it with create")
    new = NewNotification(kind, [Recipient(user_id=user.id)], context, channels=["email"])
    return create(
        db,
        submissions,
        templates,
        user,
        new,
        SYSTEM_LIMITS,
        idempotency_key=idempotency_key,
        system=True,
    )


def _erase_settled(session: Session, delivery_ids: Sequence[uuid.UUID]) -> None:
    """Erase the context of the sensitive notifications of these deliveries whose deliveries
    are all settled (sent, failed or suppressed). Their rows are locked before their
    deliveries are read, so of two transactions settling the last two deliveries of one at
    once, the later sees both settled and erases it."""
    if not delivery_ids:
        return
    locked = session.scalars(
        select(notifications_t.c.id)
        .where(
            notifications_t.c.id.in_(
                select(deliveries_t.c.notification_id).where(
                    deliveries_t.c.id.in_(list(delivery_ids))
                )
            ),
            notifications_t.c.sensitive,
            notifications_t.c.context_erased_at.is_(None),
        )
        .order_by(notifications_t.c.id)
        .with_for_update()
    ).all()
    if not locked:
        return
    unsettled = set(
        session.scalars(
            select(deliveries_t.c.notification_id).where(
                deliveries_t.c.notification_id.in_(locked),
                deliveries_t.c.status.not_in([s.value for s in DELIVERY_FINISHED]),
            )
        )
    )
    settled = [n for n in locked if n not in unsettled]
    if settled:
        session.execute(
            update(notifications_t)
            .where(notifications_t.c.id.in_(settled))
            .values(context={}, context_erased_at=utcnow())
        )


def shown_context(notification: Notification) -> dict[str, Any]:
    """A notification's context as API answers show it: a sensitive one's never."""
    return dict(REDACTED) if notification.sensitive else notification.context


#: The most notifications one digest message carries (its head included): the next one opens
#: a new digest, so a busy window renders bounded messages instead of failing every item.
MAX_DIGEST_ITEMS = 200


def _open_digest(
    session: Session, owner_id: uuid.UUID, kind: Kind, delivery: Delivery
) -> uuid.UUID | None:
    """The delivery of the same kind, sender, channel and address whose digest has not gone
    out yet (its job not started), locked so that its claim waits for this transaction: a
    delivery that joins it is in its message, or the claim came first and it starts a digest
    of its own. A digest carrying `MAX_DIGEST_ITEMS` already is full."""
    carried = aliased(Delivery)
    count = (
        select(func.count())
        .select_from(carried)
        .where(carried.digest_id == Delivery.id)
        .scalar_subquery()
    )
    query = (
        select(Delivery.id)
        .join(Notification, Notification.id == Delivery.notification_id)
        .where(
            Notification.owner_id == owner_id,
            Notification.kind == kind.name,
            Delivery.channel == delivery.channel,
            Delivery.address == delivery.address,
            Delivery.status == DeliveryStatus.PENDING.value,
            Delivery.attempts == 0,
            Delivery.digest_id.is_(None),
            Delivery.job_id.is_not(None),
            count < MAX_DIGEST_ITEMS - 1,
        )
        .order_by(Delivery.id)
        .limit(1)
        .with_for_update(of=Delivery)
    )
    return session.scalars(query).first()


def _keyed(
    db: sessionmaker[Session], owner_id: uuid.UUID, key: str, digest: str | None
) -> Created | None:
    with db() as session:
        earlier = session.scalars(
            select(Notification).where(
                Notification.owner_id == owner_id, Notification.idempotency_key == key
            )
        ).first()
        if earlier is None:
            return None
        if earlier.request_hash != digest:
            raise InvalidRequestError(
                "this Idempotency-Key was already used with a different request",
                errors=[{"field": "Idempotency-Key", "message": "reused key"}],
            )
        return Created(earlier, _deliveries_of(session, earlier.id), created=False)


def _deliveries_of(session: Session, notification_id: uuid.UUID) -> list[Delivery]:
    query = select(Delivery).where(Delivery.notification_id == notification_id)
    return list(session.scalars(query.order_by(Delivery.id)))


def get(
    db: sessionmaker[Session], notification_id: uuid.UUID, viewer: User
) -> tuple[Notification, list[Delivery]]:
    """A notification and its deliveries; 404 unless the viewer owns it or is an admin."""
    with db() as session:
        notification = session.get(Notification, notification_id)
        if notification is None or (
            not Role(viewer.role).sees_all_jobs and notification.owner_id != viewer.id
        ):
            raise NotFoundError("no such notification")
        return notification, _deliveries_of(session, notification_id)


@dataclass(frozen=True)
class DeliveryPage:
    items: list[Delivery]
    next_cursor: str | None


def list_deliveries(
    db: sessionmaker[Session],
    viewer: User,
    cursors: Cursors,
    *,
    notification_id: uuid.UUID | None = None,
    statuses: Sequence[str] = (),
    channels: Sequence[str] = (),
    cursor: str | None = None,
    limit: int = 50,
) -> DeliveryPage:
    """Deliveries newest first, by keyset pagination on the time-ordered id; a member sees
    those of their own notifications."""
    scope = Scope.of(statuses, channels, notification_id)
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit + 1)
    if not Role(viewer.role).sees_all_jobs:
        query = query.join(Notification).where(Notification.owner_id == viewer.id)
    if notification_id is not None:
        query = query.where(Delivery.notification_id == notification_id)
    if statuses:
        query = query.where(Delivery.status.in_(statuses))
    if channels:
        query = query.where(Delivery.channel.in_(channels))
    if cursor is not None:
        query = query.where(Delivery.id < cursors.read(cursor, scope))
    with db() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return DeliveryPage(rows, cursors.issue(rows[-1].id, scope) if more else None)


# --- the deliver job ------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A delivery this attempt holds (`sending`), with what it needs to render: for a digest,
    the contexts of the notifications it carries, its own first."""

    delivery: Delivery
    notification: Notification
    items: list[dict[str, Any]]


@dataclass(frozen=True)
class Skipped:
    """A delivery that must not be sent now, and why (its status)."""

    status: str
    channel: str


def claim(db: sessionmaker[Session], delivery_id: uuid.UUID, attempt: int) -> Claimed | Skipped:
    """Move the delivery to `sending` for this job attempt, with a guarded UPDATE: from
    `pending`, from `failed` (an admin replay of its job), or from `sending` held by an
    earlier attempt (which died: the message may have gone out, and the provider gets the
    delivery id as idempotency key). Returns the claim, or the status that forbids it
    (`sent`, `suppressed`, or `sending` by this very attempt): nothing is sent twice."""
    held = (deliveries_t.c.status == DeliveryStatus.SENDING.value) & (
        deliveries_t.c.claimed_attempt < attempt
    )
    with transaction(db) as session:
        claimed = rowcount(
            session.execute(
                update(deliveries_t)
                .where(
                    deliveries_t.c.id == delivery_id,
                    deliveries_t.c.status.in_([DeliveryStatus.PENDING, DeliveryStatus.FAILED])
                    | held,
                )
                .values(
                    status=DeliveryStatus.SENDING.value,
                    claimed_attempt=attempt,
                    attempts=deliveries_t.c.attempts + 1,
                    updated_at=utcnow(),
                )
            )
        )
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise PermanentDeliveryError(f"delivery {delivery_id} does not exist")
        if not claimed:
            return Skipped(delivery.status, delivery.channel)
        notification = session.get(Notification, delivery.notification_id)
        assert notification is not None  # a foreign key
        carried = session.scalars(
            select(Notification.context)
            .join(Delivery, Delivery.notification_id == Notification.id)
            .where(Delivery.digest_id == delivery_id)
            .order_by(Delivery.id)
            .limit(MAX_DIGEST_ITEMS - 1)  # bounded, even if a race let one more join
        )
        items = [notification.context, *carried]
        session.expunge_all()
        return Claimed(delivery, notification, items)


def outgoing(claimed: Claimed, templates: Templates, links: UnsubscribeLinks | None) -> Outgoing:
    """The rendered message of a claimed delivery; PermanentDeliveryError when its templates
    do not render (a variable the context lacks, say)."""
    delivery, notification = claimed.delivery, claimed.notification
    try:
        kind = templates.kind(notification.kind)
    except UnknownKindError:
        raise PermanentDeliveryError(f"no notification kind {notification.kind!r}") from None
    if notification.context_erased_at is not None:
        raise PermanentDeliveryError(
            "its context was erased once it was settled (a sensitive kind): send a new one"
        )
    unsubscribe = None
    headers: dict[str, str] = {}
    if delivery.channel == "email" and links is not None and not kind.critical:
        subscriber = (
            subscriptions.user_subscriber(delivery.user_id)
            if delivery.user_id is not None
            else subscriptions.address_subscriber("email", delivery.address)
        )
        unsubscribe = links.url(OptOut(subscriber, kind.name, "email"))
        headers["List-Unsubscribe"] = f"<{unsubscribe}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    try:
        rendered = templates.render(
            kind.name,
            delivery.channel,
            notification.context,
            recipient={
                "address": delivery.address,
                "user_id": str(delivery.user_id) if delivery.user_id else None,
                "channel": delivery.channel,
            },
            notification={"id": str(notification.id), "kind": kind.name},
            unsubscribe_url=unsubscribe,
            items=claimed.items,
        )
    except RenderError as exc:
        raise PermanentDeliveryError(f"the {delivery.channel} templates failed: {exc}") from None
    return Outgoing(
        delivery_id=delivery.id,
        notification_id=notification.id,
        kind=kind.name,
        channel=delivery.channel,
        address=delivery.address,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        data=rendered.data,
        headers=headers,
        owner_id=notification.owner_id,
    )


def record_sent(
    db: sessionmaker[Session],
    delivery_id: uuid.UUID,
    attempt: int,
    provider: str,
    provider_message_id: str | None,
) -> None:
    """The provider took the message: `sent`, with its message id."""
    now = utcnow()
    with transaction(db) as session:
        held = rowcount(
            session.execute(
                update(deliveries_t)
                .where(deliveries_t.c.id == delivery_id, deliveries_t.c.claimed_attempt == attempt)
                .values(
                    status=DeliveryStatus.SENT.value,
                    provider=provider,
                    provider_message_id=(provider_message_id or None) and provider_message_id[:500],
                    last_error=None,
                    sent_at=now,
                    updated_at=now,
                )
            )
        )
        if not held:
            return
        session.execute(  # the deliveries its digest carried went out with it
            update(deliveries_t)
            .where(
                deliveries_t.c.digest_id == delivery_id,
                deliveries_t.c.status.in_([DeliveryStatus.PENDING, DeliveryStatus.FAILED]),
            )
            .values(
                status=DeliveryStatus.SENT.value,
                provider=provider,
                provider_message_id=(provider_message_id or None) and provider_message_id[:500],
                last_error=None,
                sent_at=now,
                updated_at=now,
            )
        )
        _erase_settled(session, [delivery_id])


def record_failure(
    db: sessionmaker[Session],
    delivery_id: uuid.UUID,
    job_id: uuid.UUID,
    attempt: int,
    error: str,
    *,
    permanent: bool,
    provider: str | None = None,
    deferred: bool = False,
) -> bool:
    """This attempt failed: `failed` when it was permanent or the job's retries are spent
    (counted as the job's outcome counts them), else back to `pending` for the retry.
    `deferred`: it ended in our own `RetryLater(deferred=True)`, which uses up no retry while
    the job has fewer than `MAX_DEFERRALS` hand-backs. Returns whether the delivery is now
    `failed`."""
    with transaction(db) as session:
        job = session.get(Job, job_id)
        final = permanent
        if job is not None and not final:
            failures = job.attempts - job.worker_losses - job.handbacks
            final = failures > job.max_retries
            if deferred and job.handbacks < MAX_DEFERRALS:
                final = False
        status = DeliveryStatus.FAILED if final else DeliveryStatus.PENDING
        session.execute(
            update(deliveries_t)
            .where(deliveries_t.c.id == delivery_id, deliveries_t.c.claimed_attempt == attempt)
            .values(
                status=status.value,
                last_error=error[:MAX_ERROR_LENGTH],
                provider=provider,
                updated_at=utcnow(),
            )
        )
        session.execute(  # the deliveries its digest carries share its fate
            update(deliveries_t)
            .where(
                deliveries_t.c.digest_id == delivery_id,
                deliveries_t.c.status.in_([DeliveryStatus.PENDING, DeliveryStatus.FAILED]),
            )
            .values(
                status=status.value,
                last_error=error[:MAX_ERROR_LENGTH],
                provider=provider,
                updated_at=utcnow(),
            )
        )
        _erase_settled(session, [delivery_id])
    return final


def release(db: sessionmaker[Session], delivery_id: uuid.UUID, attempt: int) -> None:
    """The attempt stopped before it sent anything (a cancel, a worker stopping): `pending`
    again, so the next attempt sends."""
    with transaction(db) as session:
        session.execute(
            update(deliveries_t)
            .where(
                deliveries_t.c.id == delivery_id,
                deliveries_t.c.claimed_attempt == attempt,
                deliveries_t.c.status == DeliveryStatus.SENDING.value,
            )
            .values(status=DeliveryStatus.PENDING.value, updated_at=utcnow())
        )


def preview(
    templates: Templates, kind_name: str, channel: str | None, context: dict[str, Any] | None
) -> tuple[Kind, dict[str, Any]]:
    """Render a kind's templates for each of its channels (or one) with `context`, or its
    sample context: 422 naming `kind` (unknown, or a system kind), `channel` or `context`
    when that fails."""
    try:
        kind = templates.kind(kind_name)
    except UnknownKindError:
        raise _invalid("kind", "unknown kind") from None
    if kind.system:
        raise _invalid("kind", SYSTEM_ONLY)
    if channel is not None and channel not in kind.channels:
        raise _invalid("channel", f"kind {kind.name} has templates for: {list(kind.channels)}")
    sample = kind.sample if context is None else context
    rendered: dict[str, Any] = {}
    samples = {
        "email": "ada@example.com",
        "webhook": "https://example.com/hook",
        "sms": "+14155550100",
        "push": "device-token",
    }
    for name in [channel] if channel else kind.channels:
        try:
            parts = templates.render(
                kind.name,
                name,
                sample,
                recipient={"address": samples[name], "user_id": None, "channel": name},
                notification={"id": str(uuid.UUID(int=0)), "kind": kind.name},
                unsubscribe_url="https://example.com/v1/unsubscribe?token=sample"
                if name == "email" and not kind.critical
                else None,
            )
        except RenderError as exc:
            raise _invalid("context", str(exc)) from None
        rendered[name] = {k: v for k, v in vars(parts).items() if v is not None}
    return kind, rendered


# --- send-time checks, the bounce list ------------------------------------------------------


def bounced(session: Session, channel: str, address: str) -> str | None:
    """Why `address` is on the bounce list of `channel` (a delivery's error), or None."""
    reason = session.scalars(
        select(BouncedAddress.reason).where(
            BouncedAddress.channel == channel, BouncedAddress.address == address
        )
    ).first()
    return None if reason is None else f"the address bounced earlier: {reason}"[:MAX_ERROR_LENGTH]


def refusal(db: sessionmaker[Session], claimed: Claimed, templates: Templates) -> str | None:
    """Why a claimed delivery must not be sent after all, checked just before sending: the
    address bounced since, the user was deactivated, or the recipient opted out since the
    notification was created (critical kinds bypass preferences, not bounces)."""
    delivery, kind_name = claimed.delivery, claimed.notification.kind
    try:
        critical = templates.kind(kind_name).critical
    except UnknownKindError:
        return None  # rendering reports it
    with db() as session:
        bounce = bounced(session, delivery.channel, delivery.address)
        if bounce is not None:
            return bounce
        if delivery.user_id is not None:
            user = session.get(User, delivery.user_id)
            if user is not None and not user.active:
                return "the user is deactivated"
            subscriber = subscriptions.user_subscriber(delivery.user_id)
        else:
            subscriber = subscriptions.address_subscriber(delivery.channel, delivery.address)
        if critical:
            return None
        if not subscriptions.preferences(session, subscriber).opted_in(kind_name, delivery.channel):
            return "the recipient opted out before it was sent"
    return None


def record_suppressed(
    db: sessionmaker[Session], delivery_id: uuid.UUID, attempt: int, reason: str
) -> None:
    """This attempt's delivery (and what its digest carries) is `suppressed`, not sent."""
    values = {
        "status": DeliveryStatus.SUPPRESSED.value,
        "last_error": reason[:MAX_ERROR_LENGTH],
        "updated_at": utcnow(),
    }
    with transaction(db) as session:
        held = rowcount(
            session.execute(
                update(deliveries_t)
                .where(deliveries_t.c.id == delivery_id, deliveries_t.c.claimed_attempt == attempt)
                .values(values)
            )
        )
        if held:
            session.execute(
                update(deliveries_t)
                .where(
                    deliveries_t.c.digest_id == delivery_id,
                    deliveries_t.c.status.in_([DeliveryStatus.PENDING, DeliveryStatus.FAILED]),
                )
                .values(values)
            )
            _erase_settled(session, [delivery_id])


def record_bounce(
    db: sessionmaker[Session],
    delivery_id: uuid.UUID | None,
    channel: str,
    address: str,
    reason: str,
) -> None:
    """Put `address` on the bounce list (once; a second bounce keeps the first record)."""
    try:
        with transaction(db) as session:
            exists = session.scalars(
                select(BouncedAddress.id).where(
                    BouncedAddress.channel == channel, BouncedAddress.address == address
                )
            ).first()
            if exists is None:
                session.add(
                    BouncedAddress(
                        id=uuid7(),
                        channel=channel,
                        address=address,
                        reason=reason[:MAX_ERROR_LENGTH],
                        delivery_id=delivery_id,
                        created_at=utcnow(),
                    )
                )
    except IntegrityError:
        pass  # a concurrent bounce of the same address recorded it


@dataclass(frozen=True)
class BouncePage:
    items: list[BouncedAddress]
    next_cursor: str | None


def list_bounces(
    db: sessionmaker[Session],
    cursors: Cursors,
    *,
    channels: Sequence[str] = (),
    address: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> BouncePage:
    """The bounce list newest first, by keyset pages (operators and admins only: the caller
    checks)."""
    scope = Scope.of(channels, [f"address:{address or ''}"], None)
    query = select(BouncedAddress).order_by(BouncedAddress.id.desc()).limit(limit + 1)
    if channels:
        query = query.where(BouncedAddress.channel.in_(list(channels)))
    if address is not None:
        query = query.where(BouncedAddress.address.in_({address, address.lower()}))
    if cursor is not None:
        query = query.where(BouncedAddress.id < cursors.read(cursor, scope))
    with db() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return BouncePage(rows, cursors.issue(rows[-1].id, scope) if more else None)


def clear_bounce(db: sessionmaker[Session], bounce_id: uuid.UUID) -> None:
    """Take an address off the bounce list (its later deliveries are sent again); 404 if it
    is not on it."""
    with transaction(db) as session:
        if not rowcount(session.execute(delete(bounced_t).where(bounced_t.c.id == bounce_id))):
            raise NotFoundError("no such bounced address")


def clear_bounced_address(db: sessionmaker[Session], address: str, channel: str = "email") -> None:
    """Take `address` (on `channel`) off the bounce list; 404 if it is not on it."""
    with transaction(db) as session:
        gone = rowcount(
            session.execute(
                delete(bounced_t).where(
                    bounced_t.c.channel == channel,
                    bounced_t.c.address.in_({address, address.lower()}),
                )
            )
        )
        if not gone:
            raise NotFoundError(f"{address} is not on the {channel} bounce list")


# --- deliveries whose job ended without them ------------------------------------------------

#: Deliveries reconciled per statement.
RECONCILE_BATCH = 500
_ENDED = {
    JobStatus.CANCELLED.value: "its job was cancelled before it was sent",
    JobStatus.FAILED.value: "its job failed without sending it (its workers were lost)",
    JobStatus.SUCCEEDED.value: "its job ended without recording it",
}


def reconcile(
    db: sessionmaker[Session],
    *,
    finished_since: dt.datetime | None = None,
    limit: int = RECONCILE_BATCH,
) -> int:
    """End the deliveries left `pending` or `sending` by a job that finished without the
    deliver function recording an outcome: cancelled while queued (one by one, in bulk, or
    by a purge of its queue), failed for good by the lease reconciler (workers lost), or
    deleted. They become `failed`, with `last_error` saying why; a retry of the job sends
    them again. What a digest carries shares its head's fate. Returns how many it ended.

    With `finished_since`, it looks only at the `notifications.deliver` jobs finished since
    then (by the finished jobs' index, then their deliveries by job id): the cheap frequent
    pass. Without, it walks every unfinished delivery (by the status index), its job by
    primary key, and also finds those whose job was deleted: the thorough, rarer pass. The
    jobs are locked (SKIP LOCKED), so a concurrent retry of one waits for this or is seen."""
    open_ = [DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value]
    ended = 0
    query = (
        select(deliveries_t.c.id, jobs_t.c.status)
        .select_from(jobs_t.join(deliveries_t, deliveries_t.c.job_id == jobs_t.c.id))
        .where(deliveries_t.c.status.in_(open_), jobs_t.c.status.in_(list(_ENDED)))
        .limit(limit)
        .with_for_update(of=jobs_t, skip_locked=True)
    )
    if finished_since is not None:
        query = query.where(
            jobs_t.c.finished_at >= finished_since, jobs_t.c.type == DELIVER
        ).order_by(jobs_t.c.finished_at)
    else:
        query = query.order_by(deliveries_t.c.id)
    with transaction(db) as session:
        rows = session.execute(query).all()
        why = {row.id: _ENDED[row.status] for row in rows}
        if finished_since is None:
            orphans = session.scalars(  # their job was deleted
                select(deliveries_t.c.id)
                .where(
                    deliveries_t.c.status.in_(open_),
                    deliveries_t.c.job_id.is_(None),
                    deliveries_t.c.digest_id.is_(None),
                )
                .order_by(deliveries_t.c.id)
                .limit(limit)
            ).all()
            why.update({orphan: "its job was deleted before it sent it" for orphan in orphans})
        now = utcnow()
        for delivery_id, error in why.items():
            values = {"status": DeliveryStatus.FAILED.value, "last_error": error, "updated_at": now}
            ended += rowcount(
                session.execute(
                    update(deliveries_t)
                    .where(deliveries_t.c.id == delivery_id, deliveries_t.c.status.in_(open_))
                    .values(values)
                )
            )
            session.execute(
                update(deliveries_t)
                .where(
                    deliveries_t.c.digest_id == delivery_id,
                    deliveries_t.c.status == DeliveryStatus.PENDING.value,
                )
                .values(values)
            )
        _erase_settled(session, list(why))
    return ended


def reopen_for_jobs(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """The jobs are being retried: their `failed` deliveries are `pending` again (and what
    their digests carry), so the retry sends them. Runs in the retry's transaction."""
    if not job_ids:
        return
    now = utcnow()
    heads = list(
        session.scalars(
            select(deliveries_t.c.id).where(
                deliveries_t.c.job_id.in_(list(job_ids)),
                deliveries_t.c.status == DeliveryStatus.FAILED.value,
            )
        )
    )
    if not heads:
        return
    session.execute(
        update(deliveries_t)
        .where(
            (deliveries_t.c.id.in_(heads) | deliveries_t.c.digest_id.in_(heads)),
            deliveries_t.c.status == DeliveryStatus.FAILED.value,
        )
        .values(status=DeliveryStatus.PENDING.value, updated_at=now)
    )
