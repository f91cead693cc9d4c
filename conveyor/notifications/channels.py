"""The channel interface: one rendered message in, a provider's receipt out.

A channel is a resource the notifications pool registers at boot (`channel:<name>`) and
reaches through `ctx.resource`; adding a provider is one small class with `name`, `provider`
and `send`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

#: The channels a notification may go out on.
CHANNELS = ("email", "webhook", "sms", "push")


@dataclass(frozen=True)
class Outgoing:
    """One rendered message for one recipient on one channel."""

    delivery_id: uuid.UUID  # also the idempotency key given to providers
    notification_id: uuid.UUID
    kind: str  # notification kind, e.g. "welcome"
    channel: str  # "email" | "webhook" | "sms" | "push"
    address: str  # email address, webhook URL, phone number, device token
    subject: str | None = None  # email subject / push title
    text: str | None = None  # email text part / sms text / push body
    html: str | None = None  # email html part
    data: dict[str, Any] | None = None  # webhook JSON body / push data
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. List-Unsubscribe
    owner_id: uuid.UUID | None = None  # the notification's owner: whose webhook key signs


@dataclass(frozen=True)
class Sent:
    """What a provider said when it took a message."""

    provider: str  # "smtp", "outbox", "webhook", "http", "log", ...
    provider_message_id: str | None = None


class Channel(Protocol):
    """Sends messages of one channel through one provider.

    `send` raises `conveyor.errors.RetryLater` when the provider asks to wait (429 or 503
    with Retry-After), `PermanentDeliveryError` when retrying cannot help (a 4xx other than
    408 and 429, a refused address, a bad recipient); anything else is transient and retried
    with backoff.
    """

    name: str  # the channel it serves
    provider: str

    def send(self, message: Outgoing) -> Sent: ...


#: The names of the pool's other resources: its templates, unsubscribe links and metrics.
TEMPLATES = "notifications:templates"
LINKS = "notifications:links"
METRICS = "notifications:metrics"


def resource_name(channel: str) -> str:
    """The name a channel is registered under in a pool (`ctx.resource("channel:email")`)."""
    return f"channel:{channel}"
