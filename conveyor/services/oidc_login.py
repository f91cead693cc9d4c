"""OpenID Connect login on our side: the login under way between its start and the provider's
callback (kept server side as a single-use token), and the account an identity the provider
vouches for signs in to (found, linked by verified email, or created).

The protocol itself (state, nonce, PKCE, the ID token's checks) is `conveyor.security.oidc`'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import BadRequestError, ConflictError, PermissionDeniedError
from conveyor.ids import uuid7
from conveyor.models import Identity, OneTimeToken, Role, TokenPurpose, User
from conveyor.models.base import utcnow
from conveyor.security import oidc
from conveyor.services import audit, sessions
from conveyor.services.audit import Client
from conveyor.services.auth import TokenConfig
from conveyor.services.sessions import Lifetimes, MfaChallenge, Tokens, hash_secret
from conveyor.services.users import normalize_email

#: How long a user has at the provider to finish a login.
LOGIN_TTL = dt.timedelta(minutes=10)
#: The longest display name kept from a provider (the column's size).
MAX_NAME = 200

Registration = Literal["open", "closed"]
T = TypeVar("T")


@dataclass(frozen=True)
class PendingLogin:
    """What the callback of a login needs from its start."""

    provider: str
    nonce: str
    verifier: str
    #: Where the browser goes once signed in; None: the callback answers JSON.
    return_to: str | None


def save(db: sessionmaker[Session], login: oidc.LoginState, *, return_to: str | None) -> None:
    """Keep a login's nonce and PKCE verifier until its callback, under the hash of its state
    (the state travels through the browser; the rest never does)."""
    now = utcnow()
    with transaction(db) as session:
        session.add(
            OneTimeToken(
                id=uuid7(),
                purpose=TokenPurpose.OIDC_LOGIN.value,
                token_hash=hash_secret(login.state),
                created_at=now,
                expires_at=now + LOGIN_TTL,
                data={
                    "provider": login.provider,
                    "nonce": login.nonce,
                    "verifier": login.verifier,
                    "return_to": return_to,
                },
            )
        )


def claim(db: sessionmaker[Session], provider: str, state: str) -> PendingLogin:
    """Use up the login of `state` (a guarded UPDATE: of two callbacks with the same state,
    one wins). BadRequestError says why a state is refused: unknown, of another provider,
    used, or expired."""
    now = utcnow()
    with transaction(db) as session:
        token = session.scalars(
            select(OneTimeToken).where(
                OneTimeToken.token_hash == hash_secret(state),
                OneTimeToken.purpose == TokenPurpose.OIDC_LOGIN.value,
            )
        ).first()
        if token is None:
            raise _bad_state("unknown state: this login was not started here; start it again")
        if token.data.get("provider") != provider:
            raise _bad_state("this state belongs to a login with another provider")
        if token.expires_at <= now:
            raise _bad_state("this login has expired (10 minutes): start it again")
        if token.used_at is not None or not sessions.use_up(session, token.id, now):
            raise _bad_state("this login was finished already (a state is good once)")
        return PendingLogin(
            provider=provider,
            nonce=token.data["nonce"],
            verifier=token.data["verifier"],
            return_to=token.data.get("return_to"),
        )


def _bad_state(reason: str) -> BadRequestError:
    return BadRequestError(reason, errors=[{"field": "state", "message": reason}])


def sign_in(
    db: sessionmaker[Session],
    config: TokenConfig,
    lifetimes: Lifetimes,
    provider: str,
    identity: oidc.Identity,
    *,
    registration: Registration,
    client: Client,
) -> Tokens | MfaChallenge:
    """Sign in the account of `identity` (a verified ID token of `provider`): a session, or
    a second-factor challenge for a user with MFA. The account is the one linked to the
    identity; else the one of the email address the provider verified (linked now); else a new
    one, if registration is open. A disabled account is refused (403)."""

    def attempt(session: Session) -> Tokens | MfaChallenge:
        user = _account(session, provider, identity, registration=registration, client=client)
        if not user.active:
            raise PermissionDeniedError("this account is disabled")
        amr = [f"oidc:{provider}"]
        return sessions.sign_in(session, config, lifetimes, user, amr=amr, client=client)

    return _once_more_on_conflict(db, attempt)


def _once_more_on_conflict(db: sessionmaker[Session], work: Callable[[Session], T]) -> T:
    """`work` in a transaction; if it collides with a concurrent first login of the same
    account (a unique key), once more: that account and its link exist now."""
    try:
        with transaction(db) as session:
            return work(session)
    except IntegrityError:
        with transaction(db) as session:
            return work(session)


def _account(
    session: Session,
    provider: str,
    identity: oidc.Identity,
    *,
    registration: Registration,
    client: Client,
) -> User:
    now = utcnow()
    linked = session.scalars(
        select(Identity).where(Identity.provider == provider, Identity.subject == identity.subject)
    ).first()
    if linked is not None:
        linked.last_login_at = now
        linked.email = identity.email
        user = session.get(User, linked.user_id)
        assert user is not None  # an identity goes with its user (ON DELETE CASCADE)
        return user
    email = normalize_email(identity.verified_email())
    user = session.scalars(select(User).where(User.email == email)).first()
    if user is None:
        user = _register(session, identity, email, registration=registration)
        audit.record(
            session,
            "registered",
            client=client,
            actor_id=user.id,
            subject_id=user.id,
            method=f"oidc:{provider}",
        )
    elif user.email_verified_at is None:
        # Whoever created this account never proved the address is theirs: linking would
        # hand its owner's sign-in to them (a pre-registered account's takeover).
        raise ConflictError(
            f"an account with the address {email} exists but its address is not verified: "
            "verify it (or reset the password) first, then log in with the provider again"
        )
    session.add(
        Identity(
            id=uuid7(),
            user_id=user.id,
            provider=provider,
            subject=identity.subject,
            email=identity.email,
            created_at=now,
            last_login_at=now,
        )
    )
    audit.record(
        session,
        "oidc_linked",
        client=client,
        actor_id=user.id,
        subject_id=user.id,
        provider=provider,
        subject=identity.subject,
    )
    return user


def _register(
    session: Session,
    identity: oidc.Identity,
    email: str,
    *,
    registration: Registration,
) -> User:
    """A new member whose address the provider verified, without a password."""
    if registration != "open":
        raise PermissionDeniedError(
            f"no account has the address {email}, and registration is closed: ask an admin "
            "for an account"
        )
    now = utcnow()
    user = User(
        id=uuid7(),
        email=email,
        role=Role.MEMBER.value,
        active=True,
        created_at=now,
        name=identity.name[:MAX_NAME] if identity.name else None,
        email_verified_at=now,
    )
    session.add(user)
    session.flush()  # the user before its identity
    return user
