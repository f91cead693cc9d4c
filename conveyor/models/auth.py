"""What the auth service keeps beside users: sessions and their refresh tokens, single-use
tokens (email verification, password reset, a pending second factor, an OIDC login), MFA
recovery codes, API keys, linked identities and the audit log.

Every secret is stored hashed (SHA-256 of a high-entropy value): the database alone lets no
one sign in."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.ids import uuid7
from conveyor.models.base import Base, JSONType, UTCDateTime, utcnow

#: The length of a SHA-256 hex digest: every stored secret's hash.
HASH_LENGTH = 64


class Scope(enum.StrEnum):
    """What an API key may do, within what its owner's role allows. The only place scope
    names are written; each route that API keys may call names one."""

    JOBS_READ = "jobs:read"
    JOBS_WRITE = "jobs:write"
    NOTIFICATIONS_READ = "notifications:read"
    NOTIFICATIONS_WRITE = "notifications:write"
    #: Operators and admins: bulk cancel and retry, purge, the bounce list.
    OPERATIONS = "operations"
    #: Admins: users, roles and the audit log.
    USERS_READ = "users:read"
    USERS_WRITE = "users:write"


class AuthSession(Base):
    """One sign-in: a family of refresh tokens, each used once to get the next. Access
    tokens name it (`sid`), so revoking it ends them too."""

    __tablename__ = "auth_sessions"
    __table_args__ = (Index("ix_auth_sessions_user_id_id", "user_id", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The session's absolute end, however often it is refreshed.
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    #: Why: `logout`, `revoked`, `password_reset`, `refresh_reuse`, `disabled`...
    revoked_reason: Mapped[str | None] = mapped_column(String(40), default=None)
    #: How the user signed in (RFC 8176 values: `pwd`, `otp`, ... ; `oidc:<provider>`).
    amr: Mapped[list[str]] = mapped_column(JSONType, default=list)
    ip: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(300), default=None)


class RefreshToken(Base):
    """A refresh token of a session (hashed). Used once: a second use means it was stolen,
    and the whole session is revoked."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (
        Index("ix_refresh_tokens_session_id", "session_id"),
        Index("ix_refresh_tokens_expires_at", "expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("auth_sessions.id", ondelete="CASCADE")
    )
    token_hash: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class TokenPurpose(enum.StrEnum):
    """What a single-use token is for. The only place their names are written."""

    VERIFY_EMAIL = "verify_email"
    PASSWORD_RESET = "password_reset"
    #: The second step of a login with MFA: proves the password was right.
    MFA_LOGIN = "mfa_login"
    #: An OpenID Connect login under way: its state (hashed), nonce and PKCE verifier.
    OIDC_LOGIN = "oidc_login"
    #: An OpenID Connect login done, for a browser sent to `return_to`: the front end trades
    #: this code for the session (a minute, once).
    OIDC_CODE = "oidc_code"
    #: A sign-in link made on the server (`conveyor dev` prints one for its admin).
    SIGN_IN_LINK = "sign_in_link"


class OneTimeToken(Base):
    """A single-use secret with an expiry (hashed): used once, then never again."""

    __tablename__ = "one_time_tokens"
    __table_args__ = (
        Index("ix_one_time_tokens_user_id_purpose", "user_id", "purpose"),
        Index("ix_one_time_tokens_expires_at", "expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    purpose: Mapped[str] = mapped_column(String(20))
    #: None for a login not yet tied to an account (OIDC).
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), default=None
    )
    token_hash: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    #: What the purpose needs to finish (the address verified, the OIDC nonce...).
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class RecoveryCode(Base):
    """An MFA recovery code (hashed), good once."""

    __tablename__ = "recovery_codes"
    __table_args__ = (Index("ix_recovery_codes_user_id", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class ApiKey(Base):
    """A machine client's key: `cvk_<prefix>_<secret>`, shown once, stored hashed. It acts as
    its owner, narrowed to its scopes."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_user_id_id", "user_id", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    #: The visible part, to recognise a key in a list or a log.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class Identity(Base):
    """An account at an OpenID Connect provider linked to a user."""

    __tablename__ = "identities"
    __table_args__ = (
        UniqueConstraint("provider", "subject"),
        Index("ix_identities_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class AuditEvent(Base):
    """A security event: who did what to whom, from where. Written, never changed."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_subject_id_id", "subject_id", "id"),
        Index("ix_audit_events_actor_id_id", "actor_id", "id"),
        Index("ix_audit_events_action_id", "action", "id"),
    )

    #: Time-ordered: the page cursor.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: `login`, `login_failed`, `lockout`, `password_changed`, `api_key_created`, ...
    action: Mapped[str] = mapped_column(String(40))
    #: Who acted (None: someone not signed in, or Conveyor itself). No foreign keys: the log
    #: outlives what it speaks of.
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    #: The account acted on.
    subject_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    ip: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(300), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
