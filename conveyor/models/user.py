"""Users: who owns jobs, what they may see, and how they prove who they are."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import Boolean, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.ids import uuid7
from conveyor.models.base import Base, UTCDateTime, utcnow


class Role(enum.StrEnum):
    """What a user may see and do. The only place role names are written.

    A member sees and manages their own jobs; an operator every job and queue (not users);
    an admin everything, users included."""

    ADMIN = "admin"
    OPERATOR = "operator"
    MEMBER = "member"

    @property
    def sees_all_jobs(self) -> bool:
        """Whether this role sees and manages every user's jobs and the queues, not only its
        own jobs."""
        return self is not Role.MEMBER

    def at_least(self, least: Role) -> bool:
        """Whether this role may do what `least` may (member < operator < admin)."""
        return _RANKS[self] >= _RANKS[least]


_RANKS = {Role.MEMBER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class User(Base):
    """An account that holds API tokens and owns jobs."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[str] = mapped_column(String(20), default=Role.MEMBER.value)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: A display name the user chooses.
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    #: argon2id; None: the account signs in another way (OIDC, or only CLI-issued tokens).
    password_hash: Mapped[str | None] = mapped_column(Text, default=None)
    #: When the user proved they own `email` (a verification link, an identity provider,
    #: or an admin creating the account); None: not yet, and password login is refused.
    email_verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    #: Access tokens issued before this moment are refused (a password reset, "sign out
    #: everywhere"): stateless tokens revoked without a list of them.
    tokens_valid_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    password_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    #: The TOTP secret, encrypted with a key derived from the secret key; set once enrolment
    #: is confirmed (`totp_enabled_at`), pending until then.
    totp_secret: Mapped[str | None] = mapped_column(Text, default=None)
    totp_enabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    #: The last TOTP time step accepted: a code is good once.
    totp_last_step: Mapped[int | None] = mapped_column(Integer, default=None)

    @property
    def mfa_enabled(self) -> bool:
        return self.totp_enabled_at is not None
