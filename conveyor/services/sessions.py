"""Sign-in sessions: an access token (short-lived JWT) and an opaque refresh token, rotated at
every use. A refresh token used twice means someone copied it: the whole session (every token
of its family) is revoked, the thief's and the user's alike.

Refresh tokens are 256 random bits, stored as their SHA-256: the database alone refreshes
nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import InvalidTokenError, NotFoundError
from conveyor.ids import uuid7
from conveyor.models import AuthSession, OneTimeToken, RefreshToken, TokenPurpose, User
from conveyor.models.base import utcnow
from conveyor.services import audit
from conveyor.services.audit import Client
from conveyor.services.auth import TokenConfig, issue_token
from conveyor.services.jobs import rowcount
from conveyor.settings import Settings

#: The visible start of every refresh token: recognisable in a leak scanner or a log.
REFRESH_PREFIX = "cvr_"
#: How long a used refresh token is kept (to recognise its reuse) after its expiry.
REUSE_MEMORY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Lifetimes:
    """How long a session lasts: idle (each refresh token) and at most (however refreshed)."""

    idle: dt.timedelta
    max_age: dt.timedelta

    @classmethod
    def of(cls, settings: Settings) -> Lifetimes:
        return cls(
            idle=dt.timedelta(seconds=settings.session_idle_seconds),
            max_age=dt.timedelta(seconds=settings.session_max_age_seconds),
        )


@dataclass(frozen=True)
class Tokens:
    """What a sign-in or a refresh answers (RFC 6749 §5.1 names)."""

    access_token: str
    refresh_token: str
    #: Seconds the access token lives.
    expires_in: int
    session_id: uuid.UUID
    user_id: uuid.UUID


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest under which a high-entropy secret is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def start(
    session: Session,
    config: TokenConfig,
    lifetimes: Lifetimes,
    user: User,
    *,
    amr: Sequence[str],
    client: Client,
) -> Tokens:
    """Open a session for `user` (signed in by `amr`) in `session`'s transaction; the caller
    commits. Records the `login` audit event."""
    now = utcnow()
    auth_session = AuthSession(
        id=uuid7(),
        user_id=user.id,
        created_at=now,
        last_used_at=now,
        expires_at=now + lifetimes.max_age,
        amr=list(amr),
        ip=client.ip,
        user_agent=(client.user_agent or None) and client.user_agent[: audit.MAX_USER_AGENT],
    )
    session.add(auth_session)
    user.last_login_at = now
    audit.record(
        session, "login", client=client, actor_id=user.id, subject_id=user.id, amr=list(amr)
    )
    return _tokens(session, config, lifetimes, auth_session, now)


def _tokens(
    session: Session,
    config: TokenConfig,
    lifetimes: Lifetimes,
    auth_session: AuthSession,
    now: dt.datetime,
) -> Tokens:
    """A new refresh token of `auth_session` (added to `session`) and an access token."""
    refresh = _new_refresh_token()
    session.add(
        RefreshToken(
            session_id=auth_session.id,
            token_hash=hash_secret(refresh),
            created_at=now,
            expires_at=min(now + lifetimes.idle, auth_session.expires_at),
        )
    )
    ttl = min(config.ttl, auth_session.expires_at - now)
    access = issue_token(
        config,
        auth_session.user_id,
        ttl=ttl,
        session_id=auth_session.id,
        amr=tuple(auth_session.amr),
    )
    return Tokens(access, refresh, int(ttl.total_seconds()), auth_session.id, auth_session.user_id)


def refresh(
    db: sessionmaker[Session],
    config: TokenConfig,
    lifetimes: Lifetimes,
    token: str,
    *,
    client: Client,
) -> Tokens:
    """New tokens for a refresh token, which is used up (a guarded UPDATE: of two requests
    with the same token, one wins). A token used before revokes its whole session
    (`refresh_reuse` in the audit log); an unknown, expired or revoked one, or one of a
    disabled user, is an InvalidTokenError (401)."""
    now = utcnow()
    with transaction(db) as session:
        found = session.execute(
            select(RefreshToken, AuthSession, User)
            .join(AuthSession, RefreshToken.session_id == AuthSession.id)
            .join(User, AuthSession.user_id == User.id)
            .where(RefreshToken.token_hash == hash_secret(token))
        ).first()
        if found is None:
            raise InvalidTokenError("unknown refresh token")
        stored, auth_session, user = found
        if auth_session.revoked_at is not None:
            raise InvalidTokenError("the session was ended: sign in again")
        if not user.active:
            raise InvalidTokenError("the account is disabled")
        claimed = stored.used_at is None and rowcount(
            session.execute(
                update(RefreshToken)
                .where(RefreshToken.id == stored.id, RefreshToken.used_at.is_(None))
                .values(used_at=now)
            )
        )
        if claimed:
            if stored.expires_at <= now or auth_session.expires_at <= now:
                raise InvalidTokenError("the refresh token has expired: sign in again")
            auth_session.last_used_at = now
            return _tokens(session, config, lifetimes, auth_session, now)
        _revoke(auth_session, "refresh_reuse", now)
        audit.record(
            session,
            "refresh_reuse",
            client=client,
            subject_id=user.id,
            session_id=str(auth_session.id),
        )
    # Committed: the revocation stands though this request fails.
    raise InvalidTokenError(
        "this refresh token was used before, so it may have been stolen: the session is ended; "
        "sign in again"
    )


def _revoke(auth_session: AuthSession, reason: str, now: dt.datetime) -> None:
    if auth_session.revoked_at is None:
        auth_session.revoked_at = now
        auth_session.revoked_reason = reason


def revoke(
    db: sessionmaker[Session],
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    *,
    reason: str,
    client: Client = audit.NOBODY,
    actor_id: uuid.UUID | None = None,
) -> None:
    """End one of `user_id`'s sessions (its refresh tokens stop working at once, its access
    tokens within seconds); NotFoundError if it is not theirs, or ended already."""
    with transaction(db) as session:
        auth_session = session.get(AuthSession, session_id, with_for_update=True)
        if auth_session is None or auth_session.user_id != user_id:
            raise NotFoundError(f"no session {session_id}")
        if auth_session.revoked_at is not None:
            raise NotFoundError(f"no open session {session_id}: it was ended already")
        _revoke(auth_session, reason, utcnow())
        audit.record(
            session,
            "session_revoked",
            client=client,
            actor_id=actor_id or user_id,
            subject_id=user_id,
            session_id=str(session_id),
            reason=reason,
        )


def revoke_all(
    session: Session,
    user_id: uuid.UUID,
    *,
    reason: str,
    keep: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """End every open session of a user but `keep`, in `session`'s transaction; the ids of
    those ended (a web process forgets them at once)."""
    query = select(AuthSession.id).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
    )
    if keep is not None:
        query = query.where(AuthSession.id != keep)
    ended = list(session.scalars(query.with_for_update()))
    if ended:
        session.execute(
            update(AuthSession)
            .where(AuthSession.id.in_(ended))
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )
    return ended


def live_token(
    session: Session, token: str, purpose: TokenPurpose, now: dt.datetime
) -> tuple[OneTimeToken, User] | None:
    """The single-use `token` of `purpose` and its user, in `session`'s transaction, when it
    is known, not used and not expired; None otherwise (each caller says why in its own
    words). Still to use up with `use_up`, which settles a race of two requests."""
    found = session.execute(
        select(OneTimeToken, User)
        .join(User, OneTimeToken.user_id == User.id)
        .where(
            OneTimeToken.token_hash == hash_secret(token),
            OneTimeToken.purpose == purpose.value,
        )
    ).first()
    if found is None or found[0].used_at is not None or found[0].expires_at <= now:
        return None
    return found[0], found[1]


def use_up(session: Session, token_id: uuid.UUID, now: dt.datetime) -> bool:
    """Use a single-use token up, in `session`'s transaction: a guarded UPDATE, so of two
    requests with the same token only one does. Whether this call did."""
    used = session.execute(
        update(OneTimeToken)
        .where(OneTimeToken.id == token_id, OneTimeToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(used) == 1


def void_pending(
    session: Session,
    user_id: uuid.UUID,
    purpose: TokenPurpose,
    now: dt.datetime,
    *,
    keep: uuid.UUID | None = None,
) -> None:
    """Use up every unused single-use token of `purpose` of a user but `keep`, in `session`'s
    transaction: they stop working."""
    query = update(OneTimeToken).where(
        OneTimeToken.user_id == user_id,
        OneTimeToken.purpose == purpose.value,
        OneTimeToken.used_at.is_(None),
    )
    if keep is not None:
        query = query.where(OneTimeToken.id != keep)
    session.execute(query.values(used_at=now))


def logout(
    db: sessionmaker[Session],
    user_id: uuid.UUID,
    session_ids: Collection[uuid.UUID],
    *,
    client: Client = audit.NOBODY,
) -> None:
    """End the sessions named, recorded as `logout`; those that are not the user's, or that
    ended already, are passed over (signing out twice is no error)."""
    with transaction(db) as session:
        now = utcnow()
        for session_id in sorted(session_ids):
            auth_session = session.get(AuthSession, session_id, with_for_update=True)
            if auth_session is None or auth_session.user_id != user_id:
                continue
            if auth_session.revoked_at is None:
                _revoke(auth_session, "logout", now)
                audit.record(
                    session,
                    "logout",
                    client=client,
                    actor_id=user_id,
                    subject_id=user_id,
                    session_id=str(session_id),
                )


def revoke_others(
    db: sessionmaker[Session],
    user_id: uuid.UUID,
    *,
    keep: uuid.UUID | None,
    client: Client = audit.NOBODY,
    actor_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """End every open session of a user but `keep` ("sign out everywhere else", or an admin's
    "sign out everywhere": `actor_id`); the ids of those ended, recorded as one
    `session_revoked` event."""
    with transaction(db) as session:
        ended = revoke_all(session, user_id, reason="revoked", keep=keep)
        if ended:
            audit.record(
                session,
                "session_revoked",
                client=client,
                actor_id=actor_id or user_id,
                subject_id=user_id,
                sessions=[str(session_id) for session_id in ended],
                reason="revoked",
            )
    return ended


def session_of(db: sessionmaker[Session], refresh_token: str) -> AuthSession | None:
    """The session a refresh token belongs to (used or not), if it is one."""
    with db() as session:
        return session.scalar(
            select(AuthSession)
            .join(RefreshToken, RefreshToken.session_id == AuthSession.id)
            .where(RefreshToken.token_hash == hash_secret(refresh_token))
        )


def is_open(db: sessionmaker[Session], session_id: uuid.UUID) -> bool:
    """Whether a session still lets its access tokens in (not revoked, not past its end)."""
    with db() as session:
        auth_session = session.get(AuthSession, session_id)
    return (
        auth_session is not None
        and auth_session.revoked_at is None
        and auth_session.expires_at > utcnow()
    )


def get(db: sessionmaker[Session], session_id: uuid.UUID) -> AuthSession | None:
    """The session with this id (open or not), if there is one."""
    with db() as session:
        return session.get(AuthSession, session_id)


def touch(db: sessionmaker[Session], session_id: uuid.UUID, idle: dt.timedelta) -> bool:
    """Record a use of an open session (a browser's, whose cookie has no refresh token to
    rotate); False, recording nothing, when it went unused longer than `idle` or is ended."""
    now = utcnow()
    with transaction(db) as session:
        used = session.execute(
            update(AuthSession)
            .where(
                AuthSession.id == session_id,
                AuthSession.revoked_at.is_(None),
                AuthSession.last_used_at > now - idle,
            )
            .values(last_used_at=now)
        )
        return rowcount(used) == 1


def list_open(db: sessionmaker[Session], user_id: uuid.UUID) -> list[AuthSession]:
    """A user's open sessions, newest first."""
    with db() as session:
        return list(
            session.scalars(
                select(AuthSession)
                .where(
                    AuthSession.user_id == user_id,
                    AuthSession.revoked_at.is_(None),
                    AuthSession.expires_at > utcnow(),
                )
                .order_by(AuthSession.id.desc())
            )
        )


#: How long the second step of a sign-in may wait for its code.
MFA_CHALLENGE_TTL = dt.timedelta(minutes=5)
MFA_TOKEN_PREFIX = "cvm_"


@dataclass(frozen=True)
class MfaChallenge:
    """A first factor accepted; the sign-in ends with `POST /v1/auth/login/mfa`, sending
    this token and a TOTP or recovery code."""

    mfa_token: str
    expires_in: int
    methods: tuple[str, ...] = ("totp", "recovery_code")


def sign_in(
    session: Session,
    config: TokenConfig,
    lifetimes: Lifetimes,
    user: User,
    *,
    amr: Sequence[str],
    client: Client,
) -> Tokens | MfaChallenge:
    """Finish a first factor (`amr`: `pwd`, `oidc:<provider>`) in `session`'s transaction:
    a session, or, for a user with MFA on, a challenge for the second step. The caller checked
    the first factor and that the account may sign in."""
    if user.mfa_enabled:
        token = MFA_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        session.add(
            OneTimeToken(
                id=uuid7(),
                purpose=TokenPurpose.MFA_LOGIN.value,
                user_id=user.id,
                token_hash=hash_secret(token),
                created_at=now,
                expires_at=now + MFA_CHALLENGE_TTL,
                data={"amr": list(amr)},
            )
        )
        return MfaChallenge(token, int(MFA_CHALLENGE_TTL.total_seconds()))
    return start(session, config, lifetimes, user, amr=amr, client=client)
