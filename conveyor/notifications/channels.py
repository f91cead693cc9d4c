"""What a notification channel sends, and the answer it gives."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Outgoing:
    delivery_id: uuid.UUID  # also the idempotency key given to providers
    notification_id: uuid.UUID
    kind: str
    channel: str  # "email" | "webhook" | "sms" | "push"
    address: str  # email address, webhook URL, phone number, device token
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    data: dict[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sent:
    provider: str
    provider_message_id: str | None = None


class Channel(Protocol):
    name: str
    provider: str

    def send(self, message: Outgoing) -> Sent: ...
