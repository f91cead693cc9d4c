"""Job types of the `auth` pool: the emails of accounts (verification and reset links,
security notices) and the hourly purge of expired tokens and ended sessions."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import Field
from sqlalchemy.orm import Session, sessionmaker

# The emails go out as deliveries of the notifications pool: its job type must be known here
# to be queued (this pool does not run it).
from conveyor.actors import notifications  # noqa: F401
from conveyor.errors import InvalidRequestError
from conveyor.notifications.templates import Templates
from conveyor.registry import JobContext, Payload, job
from conveyor.services import auth_retention
from conveyor.services.account_mail import Mailer
from conveyor.services.submissions import Submissions
from conveyor.settings import Settings

logger = logging.getLogger(__name__)

#: The resource that sends the auth emails (`resources()` registers it).
MAILER = "auth:mailer"
#: An email to send is retried for about an hour of outage: a reset link later is useless.
SEND_RETRIES = 8
SEND_OPTIONS: dict[str, Any] = {
    "queue": "auth",
    "max_retries": SEND_RETRIES,
    "min_backoff": dt.timedelta(seconds=2),
    "max_backoff": dt.timedelta(minutes=10),
    "time_limit": dt.timedelta(minutes=1),
    "permanent": (InvalidRequestError,),
    "internal": True,
}


class Builder(Protocol):
    """What the mailer's factory uses of the container that builds it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> sessionmaker[Session]: ...

    @property
    def submissions(self) -> Submissions: ...


def resources() -> dict[str, Callable[[Any], Any]]:
    """The auth pool's resources, for `boot_pool(..., resources=...)` or a `Container`."""

    def mailer(container: Builder) -> Mailer:
        settings = container.settings
        templates = Templates(
            max_bytes=settings.notification_template_max_bytes,
            extra_dir=settings.notification_templates_dir,
        )
        return Mailer(container.db, container.submissions, templates, settings.public_url)

    return {MAILER: mailer}


class SendVerification(Payload):
    user_id: uuid.UUID


class SendPasswordReset(Payload):
    email: str = Field(max_length=320)


class SendNotice(Payload):
    user_id: uuid.UUID
    kind: str = Field(min_length=1, max_length=100, examples=["password_changed"])
    context: dict[str, Any] = Field(default_factory=dict)


class PurgeExpired(Payload):
    pass


@job(**SEND_OPTIONS)
def send_verification(payload: SendVerification, ctx: JobContext) -> dict[str, Any]:
    """Email a new account its verification link (48 hours, single use). Idempotent: the
    link's token is stored under the job id and its email keyed by it, so a redelivered job
    sends nothing twice and leaves one valid link. A verified or disabled account gets none."""
    mailer: Mailer = ctx.resource(MAILER)
    return {"sent": mailer.send_verification(payload.user_id, ctx.job_id)}


@job(**SEND_OPTIONS)
def send_password_reset(payload: SendPasswordReset, ctx: JobContext) -> dict[str, Any]:
    """Email the account of an address a password reset link (30 minutes, single use;
    earlier links stop working). No account, or a disabled one: nothing is sent, and the
    result does not say so. Idempotent like `send_verification`."""
    mailer: Mailer = ctx.resource(MAILER)
    mailer.send_password_reset(payload.email, ctx.job_id)
    return {}


@job(**SEND_OPTIONS)
def send_notice(payload: SendNotice, ctx: JobContext) -> dict[str, Any]:
    """Email a user a security notice without secrets (`new_sign_in`, `password_changed`,
    `account_exists`, `mfa_changed`), with sign-in and reset links added to its context.
    Idempotent: its email is keyed by the job id."""
    mailer: Mailer = ctx.resource(MAILER)
    return {"sent": mailer.send_notice(payload.user_id, payload.kind, payload.context, ctx.job_id)}


@job(queue="auth", max_retries=3, time_limit=dt.timedelta(minutes=10), internal=True)
def purge_expired(payload: PurgeExpired, ctx: JobContext) -> dict[str, Any]:
    """Delete single-use and refresh tokens expired over a day ago, sessions ended over 30
    days ago and recovery codes used over 30 days ago, in batches. Idempotent: what is gone
    stays gone."""
    counts = auth_retention.purge_expired(ctx.db)
    logger.info("purged expired auth rows: %s", counts)
    return counts
