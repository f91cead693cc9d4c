"""The notifications pool's metrics: deliveries by channel, provider and outcome, and how
long providers take to accept a message."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: A provider's answer: from a local SMTP relay's milliseconds to a slow API's time-out.
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The `provider` label of a delivery that failed before a provider was chosen.
NO_PROVIDER = "none"


class NotificationMetrics:
    """Recorded by `notifications.deliver` on the process's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "conveyor_notification_deliveries",
            "Delivery attempts by channel, provider and outcome (sent; retrying: a transient "
            "failure or a provider's Retry-After, to be retried; failed: permanent, or the "
            "last retry; skipped: already sent or suppressed, nothing sent; suppressed: an "
            "opt-out or a bounce found just before sending).",
            ["channel", "provider", "outcome"],
            registry=registry,
        )
        self.send_time = Histogram(
            "conveyor_notification_send_duration_seconds",
            "Time a provider took to take a message (or to fail), by channel and provider.",
            ["channel", "provider"],
            buckets=SEND_BUCKETS,
            registry=registry,
        )
