"""The emails of the auth pool: verification and reset links, and security notices.

Each is sent once per job: its notification's idempotency key is derived from the job id, and
a link's token is stored under the job id, so a retried job either finds its notification made
(and does nothing) or replaces the token it minted but never sent. No retry leaves a second
valid link behind.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import HttpUrl
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import Notification, TokenPurpose, User
from conveyor.notifications.templates import Templates
from conveyor.security.passwords import dummy_verify
from conveyor.services import notifications
from conveyor.services.accounts import RESET_TTL, VERIFY_TTL, mint_token
from conveyor.services.submissions import Submissions
from conveyor.services.users import normalize_email

#: The front-end pages the emails link to, under CONVEYOR_PUBLIC_URL. The tokens travel in
#: the fragment (`#token=`), which browsers never send to a server: no access log, proxy or
#: `Referer` sees them. The page reads it and POSTs it to the API.
VERIFY_PAGE = "/verify-email"
RESET_PAGE = "/reset-password"
SIGN_IN_PAGE = "/sign-in"
FORGOT_PAGE = "/forgot-password"


class Mailer:
    """Sends the auth emails through the notification service, as system notifications."""

    def __init__(
        self,
        db: sessionmaker[Session],
        submissions: Submissions,
        templates: Templates,
        public_url: HttpUrl | None,
    ) -> None:
        self.db = db
        self.submissions = submissions
        self.templates = templates
        self.base = str(public_url).rstrip("/") if public_url is not None else ""

    def link(self, page: str, token: str | None = None) -> str:
        """A page of the front end, with a token in the fragment (relative without a
        CONVEYOR_PUBLIC_URL, as in `conveyor dev`)."""
        return f"{self.base}{page}" + (f"#token={token}" if token else "")

    def _sent(self, user_id: uuid.UUID, key: str) -> bool:
        with self.db() as session:
            found = session.scalar(
                select(Notification.id).where(
                    Notification.owner_id == user_id, Notification.idempotency_key == key
                )
            )
        return found is not None

    def _send(self, user: User, kind: str, context: dict[str, Any], key: str) -> None:
        notifications.send_system(
            self.db, self.submissions, self.templates, user, kind, context, idempotency_key=key
        )

    def send_verification(self, user_id: uuid.UUID, job_id: uuid.UUID) -> bool:
        """Email a verification link to an active, unverified user; whether one was sent."""
        user = _user(self.db, user_id)
        key = _key(job_id)
        if user is None or not user.active or user.email_verified_at is not None:
            return False
        if self._sent(user.id, key):
            return False
        token = mint_token(
            self.db,
            user,
            TokenPurpose.VERIFY_EMAIL,
            VERIFY_TTL,
            job_id,
            data={"email": user.email},
        )
        context = {
            "verify_url": self.link(VERIFY_PAGE, token),
            "expires_hours": int(VERIFY_TTL.total_seconds() // 3600),
        }
        self._send(user, "verify_email", context, key)
        return True

    def send_password_reset(self, email: str, job_id: uuid.UUID) -> bool:
        """Email a reset link to the active account of `email`; whether one was sent. For no
        such account nothing is sent, after work of the same cost (a hash)."""
        address = normalize_email(email)
        with self.db() as session:
            user = session.scalar(select(User).where(User.email == address))
        key = _key(job_id)
        if user is None or not user.active or self._sent(user.id, key):
            dummy_verify(address)
            return False
        token = mint_token(self.db, user, TokenPurpose.PASSWORD_RESET, RESET_TTL, job_id)
        context = {
            "reset_url": self.link(RESET_PAGE, token),
            "expires_minutes": int(RESET_TTL.total_seconds() // 60),
        }
        self._send(user, "password_reset", context, key)
        return True

    def send_notice(
        self, user_id: uuid.UUID, kind: str, context: dict[str, Any], job_id: uuid.UUID
    ) -> bool:
        """Email a security notice (no secret in it) with the links every notice offers."""
        user = _user(self.db, user_id)
        if user is None:
            return False
        links = {"sign_in_url": self.link(SIGN_IN_PAGE), "recover_url": self.link(FORGOT_PAGE)}
        self._send(user, kind, {**context, **links}, _key(job_id))
        return True


def _key(job_id: uuid.UUID) -> str:
    return f"auth:{job_id}"


def _user(db: sessionmaker[Session], user_id: uuid.UUID) -> User | None:
    with db() as session:
        return session.get(User, user_id)
