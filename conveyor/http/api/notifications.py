"""Routes of notifications: create and read them, list deliveries, subscriptions, previews
and the one-click unsubscribe link."""

from __future__ import annotations

import datetime as dt
import html
import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import from_json

from conveyor.egress import EgressPolicy
from conveyor.errors import BadRequestError, InvalidRequestError, NotFoundError
from conveyor.http.api.params import (
    CURSOR,
    bounded_int,
    idempotency_key,
    next_page_link,
    page_limit,
    respond,
    routes,
    uuid_of,
)
from conveyor.http.keys import CONTAINER, NOTIFICATION_TEMPLATES, UNSUBSCRIBE_LINKS, USER
from conveyor.http.routes import HTML, Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import BouncedAddress, Delivery, DeliveryStatus, Notification, Role, Scope
from conveyor.notifications.channels import CHANNELS
from conveyor.notifications.http_channels import owner_key
from conveyor.services import notifications, subscriptions
from conveyor.services.cursors import Cursors
from conveyor.services.operations import require_operator

Channel = Literal["email", "webhook", "sms", "push"]


class RecipientIn(BaseModel):
    """A user by id, or an address on one channel."""

    model_config = ConfigDict(extra="forbid")

    user_id: uuid.UUID | None = Field(None, description="A user (their email address is used)")
    address: str | None = Field(
        None,
        max_length=2048,
        description="An email address, webhook URL, E.164 phone number or device token",
    )
    channel: Channel | None = Field(None, description="The channel of `address`")


class CreateNotification(BaseModel):
    """A notification of a kind, to recipients, with the context its templates use."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=100, examples=["welcome"])
    recipients: list[RecipientIn] = Field(min_length=1)
    channels: list[Channel] | None = Field(
        None,
        description="Channels for the user recipients; left out: by preference (the kind's "
        "default channels the user did not opt out of)",
    )
    context: dict[str, Any] = Field(default_factory=dict, examples=[{"name": "Ada"}])


class DeliveryOut(BaseModel):
    """One message of a notification: one recipient, one channel."""

    id: uuid.UUID
    notification_id: uuid.UUID
    user_id: uuid.UUID | None
    channel: str
    address: str
    status: DeliveryStatus
    attempts: int = Field(description="Attempts that tried to send it")
    last_error: str | None
    provider: str | None
    provider_message_id: str | None
    job_id: uuid.UUID | None = Field(description="The notifications.deliver job that sends it")
    digest_id: uuid.UUID | None = Field(
        description="Of a digest kind: the delivery whose message carries this one"
    )
    created_at: dt.datetime
    updated_at: dt.datetime
    sent_at: dt.datetime | None

    @classmethod
    def of(cls, d: Delivery) -> DeliveryOut:
        return cls(
            id=d.id,
            notification_id=d.notification_id,
            user_id=d.user_id,
            channel=d.channel,
            address=d.address,
            status=DeliveryStatus(d.status),
            attempts=d.attempts,
            last_error=d.last_error,
            provider=d.provider,
            provider_message_id=d.provider_message_id,
            job_id=d.job_id,
            digest_id=d.digest_id,
            created_at=d.created_at,
            updated_at=d.updated_at,
            sent_at=d.sent_at,
        )


class NotificationOut(BaseModel):
    """A notification with its deliveries."""

    id: uuid.UUID
    kind: str
    owner_id: uuid.UUID
    context: dict[str, Any] = Field(
        description='The context its templates use; `{"redacted": true}` for a sensitive kind'
    )
    idempotency_key: str | None
    created_at: dt.datetime
    deliveries: list[DeliveryOut]
    url: str

    @classmethod
    def of(cls, n: Notification, deliveries: list[Delivery]) -> NotificationOut:
        return cls(
            id=n.id,
            kind=n.kind,
            owner_id=n.owner_id,
            context=notifications.shown_context(n),
            idempotency_key=n.idempotency_key,
            created_at=n.created_at,
            deliveries=[DeliveryOut.of(d) for d in deliveries],
            url=f"/v1/notifications/{n.id}",
        )


class DeliveryPage(BaseModel):
    """One page of deliveries, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[DeliveryOut]
    next_cursor: str | None = None


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(
        min_length=1, max_length=100, description="A notification kind, or `*` for all"
    )
    channel: Channel | Literal["*"] = Field(description="A channel, or `*` for all")
    opted_in: bool


class WebhookKey(BaseModel):
    """The key the caller's webhook receivers verify `Conveyor-Signature` with."""

    owner_id: uuid.UUID = Field(description="The `o=` of the signatures of your webhooks")
    key: str = Field(description="Your webhook signing key (keep it secret)")
    previous_key: str | None = Field(
        description="Your key under the previous deployment secret, while it is rotated"
    )


class Subscriptions(BaseModel):
    """A user's choices; the most specific one decides (kind and channel, kind, channel,
    `*`); with none, a user gets a kind's default channels. Critical kinds ignore them."""

    model_config = ConfigDict(extra="forbid")

    items: list[SubscriptionIn] = Field(max_length=200)


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=100)
    channel: Channel | None = Field(None, description="One channel; left out: all the kind's")
    context: dict[str, Any] | None = Field(None, description="Left out: the kind's sample context")


class PreviewOut(BaseModel):
    kind: str
    critical: bool
    channels: list[str]
    default_channels: list[str]
    context: dict[str, Any]
    rendered: dict[str, dict[str, Any]] = Field(
        description="By channel: `subject`, `text`, `html` and `data` as rendered"
    )


class UnsubscribedOut(BaseModel):
    unsubscribed: bool
    topic: str
    channel: str


def _json(body: bytes) -> Any:
    try:  # strict JSON: no NaN or Infinity
        return from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequestError(
            f"{field} must be an id", errors=[{"field": field, "message": "not an id"}]
        ) from None


NOTIFICATION_ID = Parameter(
    "notification_id",
    "path",
    {"type": "string", "format": "uuid"},
    "The notification's id",
    required=True,
)


@routes.post(
    "/notifications",
    role=Role.MEMBER,
    scope=Scope.NOTIFICATIONS_WRITE,
    summary="Send a notification",
    body=CreateNotification,
    parameters=[
        idempotency_key(
            "The same key and request return the same notification (nothing is sent again)"
        )
    ],
    answers={
        202: Answer(
            "Created; its deliveries are queued (or suppressed)",
            NotificationOut,
            headers={"Location": "The notification's URL", "Idempotent-Replayed": "`true`"},
        )
    },
    errors={
        400: "Malformed JSON, or a bad Idempotency-Key",
        403: "A member notifying someone else, or an address other than a webhook URL",
        422: "An unknown kind or channel, a bad address, context or recipient (named)",
    },
)
async def create_notification(request: web.Request) -> web.Response:
    """Create a notification: one delivery per recipient and channel, each queued as a
    `notifications.deliver` job, or recorded `suppressed` when the recipient opted out."""
    state = request.config_dict
    container = state[CONTAINER]
    body = CreateNotification.model_validate(_json(await request.read()))
    settings = container.settings
    created = await run_db(
        state,
        notifications.create,
        container.submissions,
        state[NOTIFICATION_TEMPLATES],
        request[USER],
        notifications.NewNotification(
            kind=body.kind,
            recipients=[
                notifications.Recipient(r.user_id, r.address, r.channel) for r in body.recipients
            ],
            context=body.context,
            channels=body.channels,
        ),
        notifications.Limits(
            settings.notification_max_recipients,
            settings.notification_max_context_bytes,
            EgressPolicy.of_setting(settings.outbound_allow_hosts),
        ),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    headers = {"Location": f"/v1/notifications/{created.notification.id}"}
    if not created.created:
        headers["Idempotent-Replayed"] = "true"
    return respond(NotificationOut.of(created.notification, created.deliveries), 202, headers)


@routes.get(
    "/notifications/{notification_id}",
    role=Role.MEMBER,
    scope=Scope.NOTIFICATIONS_READ,
    summary="Read a notification and its deliveries",
    parameters=[NOTIFICATION_ID],
    answers={200: Answer("The notification", NotificationOut)},
    errors={404: "No such notification (or another member's)"},
)
async def get_notification(request: web.Request) -> web.Response:
    """A notification with each delivery's status, attempts, last error and provider id."""
    notification_id = uuid_of(request, "notification_id", "notification")
    notification, deliveries = await run_db(
        request.config_dict, notifications.get, notification_id, request[USER]
    )
    return respond(NotificationOut.of(notification, deliveries))


def _listed(request: web.Request, name: str, allowed: list[str]) -> list[str]:
    values: list[str] = []
    for raw in request.query.getall(name, []):
        values.extend(v.strip() for v in raw.split(",") if v.strip())
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise InvalidRequestError(
            f"unknown {name} {unknown[0][:100]!r}",
            errors=[{"field": name, "message": f"must be one of: {', '.join(allowed)}"}],
        )
    return values


@routes.get(
    "/deliveries",
    role=Role.MEMBER,
    scope=Scope.NOTIFICATIONS_READ,
    summary="List deliveries, newest first",
    parameters=[
        Parameter(
            "notification_id",
            "query",
            {"type": "string", "format": "uuid"},
            "Only this notification's",
        ),
        Parameter(
            "status",
            "query",
            {"type": "array", "items": {"enum": [s.value for s in DeliveryStatus]}},
            "Only these statuses (`failed`: the dead letters)",
            comma_separated=True,
        ),
        Parameter(
            "channel",
            "query",
            {"type": "array", "items": {"enum": list(CHANNELS)}},
            "Only these channels",
            comma_separated=True,
        ),
        page_limit("Deliveries per page"),
        CURSOR,
    ],
    answers={
        200: Answer(
            "A page of deliveries",
            DeliveryPage,
            headers={"Link": '`<url>; rel="next"`: the next page'},
        )
    },
    errors={400: "A cursor issued for other filters", 422: "A bad filter or limit"},
)
async def list_deliveries(request: web.Request) -> web.Response:
    """Deliveries newest first (a member's: those of their notifications), filtered by
    notification, status and channel, by `cursor` pages of `limit`."""
    settings = request.config_dict[CONTAINER].settings
    statuses = _listed(request, "status", [s.value for s in DeliveryStatus])
    channels = _listed(request, "channel", list(CHANNELS))
    raw_id = request.query.get("notification_id")
    notification_id = _uuid(raw_id, "notification_id") if raw_id else None
    cap = settings.max_page_size
    limit = bounded_int(request.query.get("limit", str(settings.default_page_size)), 0, cap + 1)
    if not 1 <= limit <= cap:
        raise InvalidRequestError(
            f"limit must be an integer from 1 to {cap}",
            errors=[{"field": "limit", "message": f"1 to {cap}"}],
        )
    page = await run_db(
        request.config_dict,
        notifications.list_deliveries,
        request[USER],
        Cursors.of(settings),
        notification_id=notification_id,
        statuses=statuses,
        channels=channels,
        cursor=request.query.get("cursor") or None,
        limit=limit,
    )
    out = DeliveryPage(items=[DeliveryOut.of(d) for d in page.items], next_cursor=page.next_cursor)
    return respond(out, headers=next_page_link(request, settings, page.next_cursor))


class BounceOut(BaseModel):
    """An address on the bounce list: its deliveries are `suppressed`, not sent."""

    id: uuid.UUID
    channel: str
    address: str
    reason: str = Field(description="What the provider answered")
    delivery_id: uuid.UUID | None = Field(description="The delivery whose send bounced")
    created_at: dt.datetime

    @classmethod
    def of(cls, b: BouncedAddress) -> BounceOut:
        return cls(
            id=b.id,
            channel=b.channel,
            address=b.address,
            reason=b.reason,
            delivery_id=b.delivery_id,
            created_at=b.created_at,
        )


class BouncePage(BaseModel):
    items: list[BounceOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; none: last")


BOUNCE_ID = Parameter(
    "bounce_id", "path", {"type": "string", "format": "uuid"}, "The entry's id", required=True
)


@routes.get(
    "/bounces",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="List the bounced addresses (operators and admins)",
    parameters=[
        Parameter(
            "channel",
            "query",
            {"type": "array", "items": {"enum": list(CHANNELS)}},
            "Only these channels",
            comma_separated=True,
        ),
        Parameter("address", "query", {"type": "string", "maxLength": 2048}, "Only this address"),
        page_limit("Entries per page"),
        CURSOR,
    ],
    answers={
        200: Answer(
            "A page of the bounce list, newest first",
            BouncePage,
            headers={"Link": '`<url>; rel="next"`: the next page'},
        )
    },
    errors={
        400: "A cursor issued for other filters",
        403: "Not an operator or admin",
        422: "A bad filter or limit",
    },
)
async def list_bounces(request: web.Request) -> web.Response:
    """The addresses a provider rejected for good (an SMTP 5xx to the recipient): deliveries
    to them are recorded `suppressed` instead of sent, until an admin clears the entry."""
    require_operator(request[USER])
    settings = request.config_dict[CONTAINER].settings
    channels = _listed(request, "channel", list(CHANNELS))
    address = request.query.get("address") or None
    if address is not None and len(address) > 2048:
        raise InvalidRequestError(
            "address: at most 2048 characters",
            errors=[{"field": "address", "message": "at most 2048 characters"}],
        )
    cap = settings.max_page_size
    limit = bounded_int(request.query.get("limit", str(settings.default_page_size)), 0, cap + 1)
    if not 1 <= limit <= cap:
        raise InvalidRequestError(
            f"limit must be an integer from 1 to {cap}",
            errors=[{"field": "limit", "message": f"1 to {cap}"}],
        )
    page = await run_db(
        request.config_dict,
        notifications.list_bounces,
        Cursors.of(settings),
        channels=channels,
        address=address,
        cursor=request.query.get("cursor") or None,
        limit=limit,
    )
    out = BouncePage(items=[BounceOut.of(b) for b in page.items], next_cursor=page.next_cursor)
    return respond(out, headers=next_page_link(request, settings, page.next_cursor))


@routes.route(
    "DELETE",
    "/bounces/{bounce_id}",
    role=Role.OPERATOR,
    scope=Scope.OPERATIONS,
    summary="Take an address off the bounce list (operators and admins)",
    parameters=[BOUNCE_ID],
    answers={204: Answer("Cleared: later deliveries to the address are sent", content_type=None)},
    errors={403: "Not an operator or admin", 404: "No such entry"},
)
async def clear_bounce(request: web.Request) -> web.Response:
    """Clear an entry of the bounce list (the mailbox exists again, say)."""
    require_operator(request[USER])
    bounce_id = uuid_of(request, "bounce_id", "bounced address")
    await run_db(request.config_dict, notifications.clear_bounce, bounce_id)
    return web.Response(status=204)


@routes.get(
    "/me/subscriptions",
    role=Role.MEMBER,
    scope=Scope.NOTIFICATIONS_READ,
    summary="Read my notification preferences",
    answers={200: Answer("My choices", Subscriptions)},
)
async def get_subscriptions(request: web.Request) -> web.Response:
    """The caller's opt-ins and opt-outs, per topic (kind or `*`) and channel (or `*`)."""
    choices = await run_db(request.config_dict, subscriptions.list_for_user, request[USER].id)
    return respond(_subscriptions_out(choices))


@routes.get(
    "/me/webhook-key",
    role=Role.MEMBER,
    summary="Read my webhook signing key",
    answers={200: Answer("The key my webhook receivers verify signatures with", WebhookKey)},
    errors={404: "Webhooks are not configured (no CONVEYOR_WEBHOOK_SECRET)"},
)
async def get_webhook_key(request: web.Request) -> web.Response:
    """The caller's own webhook signing key: every webhook of a notification the caller
    created is signed with it (and no other owner's is)."""
    settings = request.config_dict[CONTAINER].settings
    if settings.webhook_secret is None:
        raise NotFoundError("webhooks are not configured here (no CONVEYOR_WEBHOOK_SECRET)")
    owner = request[USER].id
    previous = settings.webhook_previous_secret
    return respond(
        WebhookKey(
            owner_id=owner,
            key=owner_key(settings.webhook_secret.get_secret_value(), owner),
            previous_key=owner_key(previous.get_secret_value(), owner) if previous else None,
        )
    )


def _subscriptions_out(choices: list[subscriptions.Choice]) -> Subscriptions:
    return Subscriptions(items=[SubscriptionIn.model_validate(vars(c)) for c in choices])


@routes.route(
    "PUT",
    "/me/subscriptions",
    role=Role.MEMBER,
    scope=Scope.NOTIFICATIONS_WRITE,
    summary="Replace my notification preferences",
    body=Subscriptions,
    answers={200: Answer("My choices, as stored", Subscriptions)},
    errors={400: "Malformed JSON", 422: "An unknown topic or channel, or one given twice"},
)
async def put_subscriptions(request: web.Request) -> web.Response:
    """Replace the caller's choices with these (a choice left out goes back to the
    default: opted in to a kind's default channels)."""
    state = request.config_dict
    body = Subscriptions.model_validate(_json(await request.read()))
    kinds = {k.name for k in state[NOTIFICATION_TEMPLATES].kinds()}
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(body.items):
        if item.topic != subscriptions.ANY and item.topic not in kinds:
            raise InvalidRequestError(
                f"items.{i}.topic: unknown kind {item.topic[:100]!r}",
                errors=[{"field": f"items.{i}.topic", "message": "a notification kind, or *"}],
            )
        if (item.topic, item.channel) in seen:
            raise InvalidRequestError(
                f"items.{i}: this topic and channel were given already",
                errors=[{"field": f"items.{i}", "message": "given twice"}],
            )
        seen.add((item.topic, item.channel))
    choices = [subscriptions.Choice(i.topic, i.channel, i.opted_in) for i in body.items]
    stored = await run_db(state, subscriptions.replace_for_user, request[USER].id, choices)
    return respond(_subscriptions_out(stored))


@routes.post(
    "/notifications/preview",
    role=Role.MEMBER,
    scope=Scope.NOTIFICATIONS_READ,
    summary="Render a kind's templates",
    body=PreviewIn,
    answers={200: Answer("What each channel's message would be", PreviewOut)},
    errors={400: "Malformed JSON", 422: "An unknown kind or channel, or a context that fails"},
)
async def preview_notification(request: web.Request) -> web.Response:
    """Render a kind's templates (each channel's, or one) with a context, or its sample."""
    body = PreviewIn.model_validate(_json(await request.read()))
    templates = request.config_dict[NOTIFICATION_TEMPLATES]
    kind, rendered = notifications.preview(templates, body.kind, body.channel, body.context)
    return respond(
        PreviewOut(
            kind=kind.name,
            critical=kind.critical,
            channels=list(kind.channels),
            default_channels=list(kind.default_channels),
            context=kind.sample if body.context is None else body.context,
            rendered=rendered,
        )
    )


TOKEN = Parameter(
    "token", "query", {"type": "string"}, "The token of the message's link", required=True
)


def _token(request: web.Request) -> str:
    token = request.query.get("token", "")
    if not token:
        raise InvalidRequestError(
            "token is required", errors=[{"field": "token", "message": "required"}]
        )
    return token


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unsubscribe</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><h1>Unsubscribe</h1>
<p>Stop receiving <strong>{topic}</strong> messages by {channel}?</p>
<form method="post" action="?token={token}"><button type="submit">Unsubscribe</button></form>
</body></html>
"""


@routes.get(
    "/unsubscribe",
    summary="The unsubscribe page of an email's link",
    public=True,
    parameters=[TOKEN],
    answers={200: Answer("A page with one button that unsubscribes", content_type=HTML)},
    errors={400: "Not a token this server issued", 422: "No token"},
)
async def unsubscribe_page(request: web.Request) -> web.Response:
    """A page that confirms with one button (a POST): a GET changes nothing, so the link
    scanners of mail providers, which open links, do not unsubscribe anyone."""
    token = _token(request)
    opt_out = request.config_dict[UNSUBSCRIBE_LINKS].read(token)
    page = _PAGE.format(
        topic=html.escape(opt_out.topic),
        channel=html.escape(opt_out.channel),
        token=html.escape(token),
    )
    return web.Response(text=page, content_type="text/html")


@routes.post(
    "/unsubscribe",
    summary="Unsubscribe (one click, RFC 8058)",
    public=True,
    parameters=[TOKEN],
    answers={200: Answer("Unsubscribed (now, or already)", UnsubscribedOut)},
    errors={400: "Not a token this server issued", 422: "No token"},
)
async def unsubscribe(request: web.Request) -> web.Response:
    """Record the opt-out the token names; no login needed (the signed token is the proof).
    Mail clients POST here from the `List-Unsubscribe` header."""
    opt_out = request.config_dict[UNSUBSCRIBE_LINKS].read(_token(request))
    await run_db(request.config_dict, subscriptions.opt_out, opt_out)
    out = UnsubscribedOut(unsubscribed=True, topic=opt_out.topic, channel=opt_out.channel)
    if "text/html" in request.headers.get("Accept", ""):
        return web.Response(
            text="<!doctype html><html><body><p>You are unsubscribed.</p></body></html>",
            content_type="text/html",
        )
    return respond(out)
