"""The resources the notifications pool registers: its channels, templates and links."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from conveyor.notifications.channels import LINKS, METRICS, TEMPLATES, resource_name
from conveyor.notifications.email import email_channel
from conveyor.notifications.metrics import NotificationMetrics
from conveyor.notifications.ratelimit import limited
from conveyor.notifications.templates import Templates
from conveyor.notifications.unsubscribe import UnsubscribeLinks
from conveyor.settings import Settings


class HasSettings(Protocol):
    """What a factory needs of the container that builds it."""

    @property
    def settings(self) -> Settings: ...


class HasMetrics(Protocol):
    @property
    def metrics(self) -> HasRegistry: ...


class HasRegistry(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


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

    def email(container: HasSettings) -> Any:
        return limited(email_channel(container.settings), container.settings)

    def template_set(container: HasSettings) -> Templates:
        return templates(container.settings)

    def links(container: HasSettings) -> UnsubscribeLinks:
        return UnsubscribeLinks.of(container.settings)

    def metrics(container: HasMetrics) -> NotificationMetrics:
        return NotificationMetrics(container.metrics.registry)

    return {
        resource_name("email"): email,
        TEMPLATES: template_set,
        LINKS: links,
        METRICS: metrics,
    }
