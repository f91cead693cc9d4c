"""Job types of the `notifications` pool: sending one delivery of a notification."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from typing import Any

from conveyor.errors import (
    AttemptLostError,
    BouncedAddressError,
    JobCancelledError,
    PermanentDeliveryError,
    RetryLater,
    UnknownResourceError,
    WorkerStoppingError,
)
from conveyor.notifications.channels import LINKS, METRICS, TEMPLATES, Channel, resource_name
from conveyor.notifications.metrics import NO_PROVIDER, NotificationMetrics
from conveyor.registry import JobContext, Payload, job
from conveyor.services import notifications

logger = logging.getLogger(__name__)

#: Retries of a delivery: about a day of provider outage, with full jitter between tries.
DELIVER_RETRIES = 10


class Deliver(Payload):
    delivery_id: uuid.UUID


@job(
    queue="notifications",
    max_retries=DELIVER_RETRIES,
    min_backoff=dt.timedelta(seconds=5),
    max_backoff=dt.timedelta(hours=2),
    time_limit=dt.timedelta(minutes=2),
    permanent=(PermanentDeliveryError,),
    jitter="full",
    internal=True,
)
def deliver(payload: Deliver, ctx: JobContext) -> dict[str, Any]:
    """Send one delivery through its channel, and record `sent` or the failure.

    Idempotent: the delivery is claimed (`pending` -> `sending`) with a guarded UPDATE, so a
    redelivered message for a delivery already `sent` (or suppressed) sends nothing. A
    provider's Retry-After comes back as `RetryLater`; `PermanentDeliveryError` (a refused
    address, a template that does not render, a 4xx) fails at once; anything else is
    retried with exponential backoff and full jitter. After the last attempt the delivery is
    `failed`, and its job a dead letter.
    """
    delivery_id = payload.delivery_id
    metrics: NotificationMetrics = ctx.resource(METRICS)
    claimed = notifications.claim(ctx.db, delivery_id, ctx.attempt)
    if isinstance(claimed, notifications.Skipped):
        logger.info("delivery %s is %s: nothing to send", delivery_id, claimed.status)
        metrics.deliveries.labels(claimed.channel, NO_PROVIDER, "skipped").inc()
        return {"delivery_id": str(delivery_id), "status": claimed.status, "sent": False}
    channel_name = claimed.delivery.channel
    refused = notifications.refusal(ctx.db, claimed, ctx.resource(TEMPLATES))
    if refused is not None:  # opted out or bounced since it was created: recorded, not sent
        notifications.record_suppressed(ctx.db, delivery_id, ctx.attempt, refused)
        logger.info("delivery %s suppressed: %s", delivery_id, refused)
        metrics.deliveries.labels(channel_name, NO_PROVIDER, "suppressed").inc()
        return {"delivery_id": str(delivery_id), "status": "suppressed", "sent": False}
    provider: str | None = None
    started: float | None = None

    def failed(error: str, *, permanent: bool, deferred: bool = False) -> None:
        final = notifications.record_failure(
            ctx.db,
            delivery_id,
            ctx.job_id,
            ctx.attempt,
            error,
            permanent=permanent,
            provider=provider,
            deferred=deferred,
        )
        outcome = "failed" if final else "retrying"
        metrics.deliveries.labels(channel_name, provider or NO_PROVIDER, outcome).inc()
        if started is not None:
            metrics.send_time.labels(channel_name, provider).observe(time.monotonic() - started)

    try:
        message = notifications.outgoing(claimed, ctx.resource(TEMPLATES), ctx.resource(LINKS))
        try:
            channel: Channel = ctx.resource(resource_name(channel_name))
        except UnknownResourceError:
            raise PermanentDeliveryError(
                f"no {channel_name} provider is configured in this pool"
            ) from None
        provider = channel.provider
        started = time.monotonic()
        sent = channel.send(message)
    except JobCancelledError:
        failed(
            "its job was cancelled (if that happened while sending, it may have gone out)",
            permanent=True,
        )
        raise
    except (AttemptLostError, WorkerStoppingError):  # it runs again: let that attempt send
        notifications.release(ctx.db, delivery_id, ctx.attempt)
        raise
    except PermanentDeliveryError as exc:
        if isinstance(exc, BouncedAddressError):
            notifications.record_bounce(
                ctx.db, delivery_id, channel_name, claimed.delivery.address, str(exc)
            )
        failed(str(exc), permanent=True)
        raise
    except Exception as exc:
        error = str(exc) or type(exc).__name__
        deferred = isinstance(exc, RetryLater) and exc.deferred  # our own rate limit
        if isinstance(exc, RetryLater) and not deferred:
            error = f"the provider asked to retry later: {error}"
        failed(error, permanent=False, deferred=deferred)
        raise
    metrics.send_time.labels(channel_name, sent.provider).observe(time.monotonic() - started)
    notifications.record_sent(
        ctx.db, delivery_id, ctx.attempt, sent.provider, sent.provider_message_id
    )
    metrics.deliveries.labels(channel_name, sent.provider, "sent").inc()
    return {
        "delivery_id": str(delivery_id),
        "status": "sent",
        "sent": True,
        "provider": sent.provider,
        "provider_message_id": sent.provider_message_id,
    }
