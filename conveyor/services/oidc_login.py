"""OpenID Connect login on our side: the login under way between its start and the provider's
callback (kept server side as a single-use token, bound to the browser that started it), the
account an identity the provider vouches for signs in to (found, linked by verified email, or
created), and the login code a browser sent back to `return_to` trades for the session.

The protocol itself (state, nonce, PKCE, the ID token's checks) is `conveyor.security.oidc`'s.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    PermissionDeniedError,
)
from conveyor.ids import uuid7
from conveyor.models import Identity, Job, OneTimeToken, Role, TokenPurpose, User
from conveyor.models.base import utcnow
from conveyor.security import oidc
from conveyor.security.throttle import Throttle, too_many
from conveyor.services import audit, sessions
from conveyor.services.audit import Client
from conveyor.services.auth import TokenConfig
from conveyor.services.sessions import Lifetimes, MfaChallenge, Tokens, hash_secret
from conveyor.services.sign_in import notify_sign_in
from conveyor.services.submissions import Submissions
from conveyor.services.users import normalize_email

#: How long a user has at the provider to finish a login.
LOGIN_TTL = dt.timedelta(minutes=10)
#: How long the front end has to trade a login code for the session; and the code's prefix.
CODE_TTL = dt.timedelta(seconds=60)
CODE_PREFIX = "cvo_"
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


def save(
    db: sessionmaker[Session],
    throttle: Throttle,
    login: oidc.LoginState,
    *,
    return_to: str | None,
    binding: str,
    client: Client,
) -> None:
    """Keep a login's nonce and PKCE verifier until its callback, under the hash of its state
    (the state travels through the browser; the rest never does), with the hash of `binding`,
    the secret of the browser's cookie. Starts count against the client address's sign-in
    attempts (429 past them): each keeps a row for 10 minutes."""
    by_ip = throttle.hit(f"login:ip:{client.ip}")
    if not by_ip.allowed:
        raise too_many(by_ip, "sign-in attempts from this address")
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
                    "binding": hash_secret(binding),
                },
            )
        )


def check_browser(db: sessionmaker[Session], state: str, binding: str | None) -> None:
    """Refuse the callback of `state` in another browser than the one that started the login
    (RFC 6749 10.12: else anyone could sign a victim's browser in to the sender's account by
    sending it their own callback link). `binding` is the secret of the start's cookie. An
    unknown state passes: `claim` says why it is refused."""
    if not binding:
        raise _bad_state(
            "this browser did not start this login (its cookie is missing): start it again"
        )
    with db() as session:
        data = session.scalar(
            select(OneTimeToken.data).where(
                OneTimeToken.token_hash == hash_secret(state),
                OneTimeToken.purpose == TokenPurpose.OIDC_LOGIN.value,
            )
        )
    expected = str((data or {}).get("binding", ""))
    if data is not None and not hmac.compare_digest(expected, hash_secret(binding)):
        raise _bad_state("this login was started in another browser: start it again")


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
    submissions: Submissions,
    config: TokenConfig,
    lifetimes: Lifetimes,
    provider: oidc.ProviderConfig,
    identity: oidc.Identity,
    *,
    registration: Registration,
    client: Client,
) -> Tokens | MfaChallenge:
    """Sign in the account of `identity` (a verified ID token of `provider`): a session, or
    a second-factor challenge for a user with MFA. The account is the one linked to the
    identity; else the one of the email address the provider verified (linked now, if the
    provider's `link_existing` allows; its owner is told); else a new one, if registration is
    open. A disabled account is refused (403). A sign-in to an account used before is
    notified by email (`new_sign_in`)."""

    def attempt(session: Session) -> tuple[Tokens | MfaChallenge, list[Job]]:
        user, jobs = _account(
            session, submissions, provider, identity, registration=registration, client=client
        )
        amr = [f"oidc:{provider.name}"]
        result, notices = _open(session, submissions, config, lifetimes, user, amr, client)
        return result, jobs + notices

    result, jobs = _once_more_on_conflict(db, attempt)
    submissions.publish_written(jobs)
    return result


def issue_code(
    db: sessionmaker[Session],
    submissions: Submissions,
    provider: oidc.ProviderConfig,
    identity: oidc.Identity,
    *,
    registration: Registration,
    client: Client,
) -> str:
    """The account of `identity`, found as `sign_in` finds it, but a login code instead of a
    session: the browser carries it to `return_to`, whose page trades it (`exchange`) within
    a minute, once. Neither the code's row nor the URL holds a token."""
    code = CODE_PREFIX + secrets.token_urlsafe(32)

    def attempt(session: Session) -> tuple[str, list[Job]]:
        user, jobs = _account(
            session, submissions, provider, identity, registration=registration, client=client
        )
        now = utcnow()
        session.add(
            OneTimeToken(
                id=uuid7(),
                purpose=TokenPurpose.OIDC_CODE.value,
                user_id=user.id,
                token_hash=hash_secret(code),
                created_at=now,
                expires_at=now + CODE_TTL,
                data={"amr": [f"oidc:{provider.name}"]},
            )
        )
        return code, jobs

    code, jobs = _once_more_on_conflict(db, attempt)
    submissions.publish_written(jobs)
    return code


def exchange(
    db: sessionmaker[Session],
    submissions: Submissions,
    config: TokenConfig,
    lifetimes: Lifetimes,
    code: str,
    *,
    client: Client,
) -> Tokens | MfaChallenge:
    """Trade a login code for the session of its sign-in (or its second-factor challenge).
    A code works once, for a minute (a guarded UPDATE: of two trades, one wins); an unknown,
    used or expired code, or one of an account disabled since, is an AuthenticationError."""
    now = utcnow()
    with transaction(db) as session:
        claimed = session.execute(
            update(OneTimeToken)
            .where(
                OneTimeToken.token_hash == hash_secret(code),
                OneTimeToken.purpose == TokenPurpose.OIDC_CODE.value,
                OneTimeToken.used_at.is_(None),
                OneTimeToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(OneTimeToken.user_id, OneTimeToken.data)
            .execution_options(synchronize_session=False)
        ).first()
        user = session.get(User, claimed.user_id) if claimed is not None else None
        if claimed is None or user is None:
            raise _bad_code("unknown, used or expired login_code: log in again")
        if not user.active:
            raise _bad_code("this account is disabled")
        result, jobs = _open(
            session, submissions, config, lifetimes, user, claimed.data["amr"], client
        )
    submissions.publish_written(jobs)
    return result


def _bad_code(reason: str) -> AuthenticationError:
    return AuthenticationError(reason, errors=[{"field": "login_code", "message": reason}])


def _open(
    session: Session,
    submissions: Submissions,
    config: TokenConfig,
    lifetimes: Lifetimes,
    user: User,
    amr: list[str],
    client: Client,
) -> tuple[Tokens | MfaChallenge, list[Job]]:
    """The session (or MFA challenge) of `user`, and the `new_sign_in` notice of a session of
    an account used before (a first sign-in, or an MFA challenge, whose second step notifies,
    sends none), as a password sign-in does."""
    first = user.last_login_at is None
    result = sessions.sign_in(session, config, lifetimes, user, amr=amr, client=client)
    if first or isinstance(result, MfaChallenge):
        return result, []
    return result, [notify_sign_in(session, submissions, user.id, client, amr)]


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
    submissions: Submissions,
    provider: oidc.ProviderConfig,
    identity: oidc.Identity,
    *,
    registration: Registration,
    client: Client,
) -> tuple[User, list[Job]]:
    """The active account `identity` signs in to, and the `identity_linked` notice to its
    owner if it was linked now (not for an account made now)."""
    user, linked = _linked_account(
        session, provider, identity, registration=registration, client=client
    )
    if not user.active:
        raise PermissionDeniedError("this account is disabled")
    if not linked:
        return user, []
    amr = [f"oidc:{provider.name}"]
    return user, [
        notify_sign_in(session, submissions, user.id, client, amr, kind="identity_linked")
    ]


def _linked_account(
    session: Session,
    config: oidc.ProviderConfig,
    identity: oidc.Identity,
    *,
    registration: Registration,
    client: Client,
) -> tuple[User, bool]:
    """The account of `identity` (found, linked, or made), and whether an existing account
    was linked to it now."""
    provider = config.name
    now = utcnow()
    linked = session.scalars(
        select(Identity).where(Identity.provider == provider, Identity.subject == identity.subject)
    ).first()
    if linked is not None:
        linked.last_login_at = now
        linked.email = identity.email
        user = session.get(User, linked.user_id)
        assert user is not None  # an identity goes with its user (ON DELETE CASCADE)
        return user, False
    email = normalize_email(identity.verified_email())
    user = session.scalars(select(User).where(User.email == email)).first()
    existing = user is not None
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
    elif not config.link_existing:
        raise ConflictError(
            f"an account with the address {email} exists, and accounts are not linked to "
            f"{provider} by their address: sign in with its password instead"
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
    return user, existing


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
