"""Job types of the `notifications` pool: sending one delivery of a notification."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from conveyor.errors import (
    AttemptLostError,
    JobCancelledError,
    PermanentDeliveryError,
    RetryLater,
    UnknownResourceError,
    WorkerStoppingError,
)
from conveyor.notifications.channels import Channel, resource_name
from conveyor.notifications.resources import LINKS, TEMPLATES
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
    claimed = notifications.claim(ctx.db, delivery_id, ctx.attempt)
    if isinstance(claimed, str):
        logger.info("delivery %s is %s: nothing to send", delivery_id, claimed)
        return {"delivery_id": str(delivery_id), "status": claimed, "sent": False}
    provider: str | None = None
    try:
        message = notifications.outgoing(claimed, ctx.resource(TEMPLATES), ctx.resource(LINKS))
        try:
            channel: Channel = ctx.resource(resource_name(message.channel))
        except UnknownResourceError:
            raise PermanentDeliveryError(
                f"no {message.channel} provider is configured in this pool"
            ) from None
        provider = channel.provider
        sent = channel.send(message)
    except (JobCancelledError, AttemptLostError, WorkerStoppingError):
        notifications.release(ctx.db, delivery_id, ctx.attempt)
        raise
    except PermanentDeliveryError as exc:
        notifications.record_failure(
            ctx.db,
            delivery_id,
            ctx.job_id,
            ctx.attempt,
            str(exc),
            permanent=True,
            provider=provider,
        )
        raise
    except Exception as exc:
        error = str(exc) or type(exc).__name__
        if isinstance(exc, RetryLater):
            error = f"provider asked to retry later: {error}"
        notifications.record_failure(
            ctx.db,
            delivery_id,
            ctx.job_id,
            ctx.attempt,
            error,
            permanent=False,
            provider=provider,
        )
        raise
    notifications.record_sent(
        ctx.db, delivery_id, ctx.attempt, sent.provider, sent.provider_message_id
    )
    return {
        "delivery_id": str(delivery_id),
        "status": "sent",
        "sent": True,
        "provider": sent.provider,
        "provider_message_id": sent.provider_message_id,
    }
