"""The resources the notifications pool registers: its channels, templates and links."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from conveyor.errors import UnknownResourceError
from conveyor.notifications.channels import (
    LINKS,
    METRICS,
    TEMPLATES,
    Channel,
    resource_name,
)
from conveyor.notifications.email import email_channel
from conveyor.notifications.http_channels import http_channels
from conveyor.notifications.metrics import NotificationMetrics
from conveyor.notifications.ratelimit import limited
from conveyor.notifications.templates import Templates
from conveyor.notifications.unsubscribe import UnsubscribeLinks
from conveyor.outbound import HttpClient
from conveyor.settings import Settings

#: The `webhook`, `sms` and `push` channels, built together from the settings.
HTTP_CHANNELS = "notifications:http_channels"


class HasRegistry(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class Builder(Protocol):
    """What the factories use of the container that builds them."""

    @property
    def settings(self) -> Settings: ...

    @property
    def http(self) -> HttpClient: ...

    @property
    def metrics(self) -> HasRegistry: ...

    def resource(self, name: str) -> Any: ...


def config_error(settings: Settings) -> str | None:
    """Why the notifications pool cannot start with these settings (None: it can)."""
    if settings.email_transport == "smtp" and settings.public_url is None:
        return (
            "the notifications pool sends email over SMTP but CONVEYOR_PUBLIC_URL is not set: "
            "set it to the API's public address (unsubscribe links point there)"
        )
    return None


def templates(settings: Settings) -> Templates:
    return Templates(
        max_bytes=settings.notification_template_max_bytes,
        extra_dir=settings.notification_templates_dir,
    )


def resources() -> dict[str, Callable[[Any], Any]]:
    """Factories by resource name, for `boot_pool(..., resources=...)` or a `Container`.

    A channel of your own is one more entry, `channel:<name>`, whose factory returns an
    object with `name`, `provider` and `send(Outgoing) -> Sent` (wrap it in
    `ratelimit.limited` for its provider's `CONVEYOR_NOTIFICATION_RATE_LIMITS`)."""

    def email(container: Builder) -> Channel:
        return limited(email_channel(container.settings), container.settings)

    def over_http(container: Builder) -> dict[str, Channel]:
        return http_channels(container.settings, container.http)

    def http_channel(name: str) -> Callable[[Builder], Channel]:
        def build(container: Builder) -> Channel:
            built: dict[str, Channel] = container.resource(HTTP_CHANNELS)
            if name not in built:  # a webhook without CONVEYOR_WEBHOOK_SECRET
                raise UnknownResourceError(f"no {name} channel: its settings are not set")
            return limited(built[name], container.settings)

        return build

    def template_set(container: Builder) -> Templates:
        return templates(container.settings)

    def links(container: Builder) -> UnsubscribeLinks:
        return UnsubscribeLinks.of(container.settings)

    def metrics(container: Builder) -> NotificationMetrics:
        return NotificationMetrics(container.metrics.registry)

    return {
        resource_name("email"): email,
        HTTP_CHANNELS: over_http,
        **{resource_name(name): http_channel(name) for name in ("webhook", "sms", "push")},
        TEMPLATES: template_set,
        LINKS: links,
        METRICS: metrics,
    }
