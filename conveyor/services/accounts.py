"""Accounts: registration, email verification, password change and reset (signing in is
`services.sign_in`; the purge, `services.auth_retention`).

Nothing here tells a stranger whether an address has an account: registration and reset
requests answer the same, and do the same work, whatever the address. The emails go out
from the `auth` pool (`conveyor.actors.auth`), queued in the transaction of the change that
calls for them.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from conveyor.ids import uuid7
from conveyor.models import (
    Job,
    OneTimeToken,
    Role,
    TokenPurpose,
    User,
)
from conveyor.models.base import utcnow
from conveyor.security.passwords import (
    check_password,
    hash_password,
    verify_password,
)
from conveyor.security.throttle import Rule, Throttle, make_store, too_many
from conveyor.services import audit, sessions
from conveyor.services.audit import Client
from conveyor.services.sessions import hash_secret
from conveyor.services.submissions import Submissions, insert_jobs
from conveyor.services.users import normalize_email
from conveyor.settings import Settings

VERIFY_TTL = dt.timedelta(hours=48)
RESET_TTL = dt.timedelta(minutes=30)
#: The account that owns every job of the auth pool (the emails of accounts, which are not
#: their users' to read or cancel, and the hourly purge). It cannot sign in: it is disabled
#: and has no password; `conveyor users list` leaves it out. `.invalid` is reserved
#: (RFC 2606): no mail reaches it.
SYSTEM_EMAIL = "system@conveyor.invalid"


@dataclass(frozen=True)
class Throttles:
    """The attempt limits of sign-in (both steps), registration, and reset and verification
    requests."""

    login_account: Throttle
    login_ip: Throttle
    #: Reset requests, verification resends and registrations (each counted apart), per
    #: client address and per email address.
    reset: Throttle
    #: Second-factor checks per account (`CONVEYOR_MFA_RATE`).
    mfa: Throttle

    @classmethod
    def of(cls, settings: Settings) -> Throttles:
        store = make_store(settings.redis_url, settings.redis_prefix)
        return cls(
            login_account=Throttle(store, Rule.parse(settings.login_account_rate)),
            login_ip=Throttle(store, Rule.parse(settings.login_ip_rate)),
            reset=Throttle(store, Rule.parse(settings.reset_rate)),
            mfa=Throttle(store, Rule.parse(settings.mfa_rate)),
        )


# --- jobs of the auth pool ----------------------------------------------------------------


def queue_notice(
    session: Session,
    submissions: Submissions,
    user_id: uuid.UUID,
    kind: str,
    context: dict[str, Any],
) -> Job:
    """Write an `auth.send_notice` job (a security notice without secrets, such as
    `password_changed`) in `session`'s transaction; publish it with
    `submissions.publish_written([job])` after the commit. The system account owns it, not
    the user: a notice is not theirs to read, cancel or retry."""
    new = submissions.build(
        "auth.send_notice",
        {"user_id": str(user_id), "kind": kind, "context": context},
        owner_id=system_owner_in(session),
    )
    return insert_jobs(session, [new])[0]


def _queue(
    session: Session, submissions: Submissions, job_type: str, payload: dict[str, Any]
) -> Job:
    new = submissions.build(job_type, payload, owner_id=system_owner_in(session))
    return insert_jobs(session, [new])[0]


def system_owner(db: sessionmaker[Session]) -> uuid.UUID:
    """The id of the system account (see SYSTEM_EMAIL), created on first use."""
    with transaction(db) as session:
        return system_owner_in(session)


def system_owner_in(session: Session) -> uuid.UUID:
    """`system_owner` in the caller's transaction (the account is made in a savepoint, so a
    concurrent first use costs a retry of the lookup, not the caller's transaction)."""
    query = select(User.id).where(User.email == SYSTEM_EMAIL)
    found = session.scalar(query)
    if found is not None:
        return found
    user_id = uuid7()
    try:
        with session.begin_nested():
            session.add(User(id=user_id, email=SYSTEM_EMAIL, role=Role.MEMBER.value, active=False))
    except IntegrityError:  # another process made it meanwhile
        found = session.scalar(query)
        if found is None:
            raise
        return found
    return user_id


def moment(when: dt.datetime) -> str:
    """A time as the notices write it."""
    return when.strftime("%Y-%m-%d %H:%M UTC")


# --- registration and verification --------------------------------------------------------


def register(
    db: sessionmaker[Session],
    submissions: Submissions,
    throttles: Throttles,
    email: str,
    password: str,
    name: str | None,
    *,
    client: Client,
) -> None:
    """Create an unverified account and queue its verification email; for an address that
    has an account already, queue an `account_exists` notice to it instead. Either way the
    caller answers the same, and the password is hashed (the same cost). Registrations count
    against the limits of reset requests (CONVEYOR_RESET_RATE): 429 past the client
    address's; past the email address's, nothing happens and nothing tells."""
    check_password(password, email=normalize_email(email))
    address = _limited_request(throttles, "register", email, client)
    if address is None:
        return
    hashed = hash_password(password)
    for _ in range(2):  # a concurrent registration of the address makes it "existing"
        try:
            with transaction(db) as session:
                existing = session.scalar(select(User).where(User.email == address))
                if existing is not None:
                    job = queue_notice(session, submissions, existing.id, "account_exists", {})
                else:
                    user = User(id=uuid7(), email=address, name=name, password_hash=hashed)
                    session.add(user)
                    session.flush()
                    audit.record(
                        session, "registered", client=client, subject_id=user.id, actor_id=user.id
                    )
                    job = _queue(
                        session, submissions, "auth.send_verification", {"user_id": str(user.id)}
                    )
            break
        except IntegrityError:
            continue
    else:  # pragma: no cover (two races in a row)
        raise ConflictError("the address is being registered: try again")
    submissions.publish_written([job])


def resend_verification(
    db: sessionmaker[Session],
    submissions: Submissions,
    throttles: Throttles,
    email: str,
    *,
    client: Client,
) -> None:
    """Queue a new verification email for an unverified account. Refused (429) past the
    client address's limit; past the address's own limit nothing happens and nothing tells.
    Any other address gets the same work: its job is queued for the system account, which
    is sent nothing (it is disabled), so the time of the answer tells nothing either."""
    address = _limited_request(throttles, "verify", email, client)
    if address is None:
        return
    with transaction(db) as session:
        user = session.scalar(select(User).where(User.email == address))
        recipient = system_owner_in(session)
        if user is not None and user.active and user.email_verified_at is None:
            recipient = user.id
        job = _queue(session, submissions, "auth.send_verification", {"user_id": str(recipient)})
    submissions.publish_written([job])


def _limited_request(throttles: Throttles, what: str, email: str, client: Client) -> str | None:
    """The normalized `email` when a request of `what` may go on; None when the address's
    limit is reached (silently); TooManyRequestsError past the client address's limit."""
    address = normalize_email(email)
    by_ip = throttles.reset.hit(f"{what}:ip:{client.ip}")
    if not by_ip.allowed:
        raise too_many(by_ip, "requests from this address")
    return address if throttles.reset.hit(f"{what}:email:{address}").allowed else None


def _claim(session: Session, token: str, purpose: TokenPurpose) -> OneTimeToken:
    """Use up a single-use token of `purpose` (the caller's transaction): InvalidRequestError
    naming `token` if it is unknown, used or expired."""
    row = session.scalar(
        select(OneTimeToken).where(
            OneTimeToken.token_hash == hash_secret(token), OneTimeToken.purpose == purpose.value
        )
    )
    now = utcnow()
    problem = None
    if row is None or row.user_id is None:
        problem = "not a valid link: it may be mistyped, or from an older email"
    elif row.used_at is not None:
        problem = "this link was used already: each works once"
    elif row.expires_at <= now:
        problem = "this link has expired: ask for a new one"
    elif not sessions.use_up(session, row.id, now):
        problem = "this link was used already: each works once"
    if problem is not None or row is None:
        raise InvalidRequestError(problem, errors=[{"field": "token", "message": problem}])
    return row


def verify_email(db: sessionmaker[Session], token: str, *, client: Client) -> None:
    """Mark the address of a verification token as verified; the token is used up."""
    with transaction(db) as session:
        row = _claim(session, token, TokenPurpose.VERIFY_EMAIL)
        user = session.get(User, row.user_id)
        if user is None or not user.active or user.email != row.data.get("email"):
            message = "this link is not valid for the account any more"
            raise InvalidRequestError(message, errors=[{"field": "token", "message": message}])
        if user.email_verified_at is None:
            user.email_verified_at = utcnow()
        audit.record(session, "email_verified", client=client, actor_id=user.id, subject_id=user.id)


def mint_token(
    db: sessionmaker[Session],
    user: User,
    purpose: TokenPurpose,
    ttl: dt.timedelta,
    token_id: uuid.UUID,
    *,
    data: dict[str, Any] | None = None,
) -> str:
    """A new single-use token for `user`, stored (hashed) under `token_id`: a retried job
    passes the same id and replaces its own unsent token instead of adding a second one.
    Earlier unused tokens of the purpose stop working."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with transaction(db) as session:
        sessions.void_pending(session, user.id, purpose, now, keep=token_id)
        row = session.get(OneTimeToken, token_id)
        if row is None:
            row = OneTimeToken(id=token_id, purpose=purpose.value, user_id=user.id)
            session.add(row)
        row.token_hash = hash_secret(token)
        row.created_at = now
        row.expires_at = now + ttl
        row.used_at = None
        row.data = data or {}
    return token


# --- the account itself -----------------------------------------------------------------------


def update_profile(db: sessionmaker[Session], user_id: uuid.UUID, name: str | None) -> User:
    """Change the display name of an account."""
    with transaction(db) as session:
        user = _user(session, user_id)
        user.name = name
    return user


def _user(session: Session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        raise NotFoundError(f"no user {user_id}")
    return user


def _new_password_hash(password: str, email: str, field: str) -> str:
    """The hash of a new password that meets the rules; InvalidRequestError naming `field`."""
    try:
        check_password(password, email=email)
    except InvalidRequestError as exc:
        errors = [{**error, "field": field} for error in exc.errors or ()]
        raise InvalidRequestError(exc.detail, errors=errors) from None
    return hash_password(password)


def change_password(
    db: sessionmaker[Session],
    submissions: Submissions,
    throttles: Throttles,
    user_id: uuid.UUID,
    current: str,
    new: str,
    *,
    keep_session: uuid.UUID | None,
    client: Client,
) -> PasswordSet:
    """Replace a signed-in user's password after checking the current one: every other
    session of theirs ends, and they get a notice. Each check counts against the account's
    sign-in limit before it is made (so concurrent guesses cannot outrun it); a right one
    clears it."""
    with transaction(db) as session:
        user = _user(session, user_id)
        account_key = f"login:account:{user.email}"
        counted = throttles.login_account.hit(account_key)
        if not counted.allowed:
            raise too_many(counted, "wrong passwords for this account", field="current_password")
        if user.password_hash is None or not verify_password(user.password_hash, current):
            message = "not your current password"
            raise InvalidRequestError(
                message, errors=[{"field": "current_password", "message": message}]
            )
        throttles.login_account.reset(account_key)
        hashed = _new_password_hash(new, user.email, "new_password")
        changed = _set_password(session, user, hashed, reason="password_changed", keep=keep_session)
        audit.record(
            session, "password_changed", client=client, actor_id=user.id, subject_id=user.id
        )
        job = _password_changed_notice(session, submissions, user.id, changed, client)
    submissions.publish_written([job])
    return changed


@dataclass(frozen=True)
class PasswordSet:
    """A new password stored: whose, when, and the sign-in sessions it ended (a web process
    forgets those at once)."""

    user_id: uuid.UUID
    when: dt.datetime
    ended: list[uuid.UUID]


def _set_password(
    session: Session,
    user: User,
    hashed: str,
    *,
    reason: str,
    keep: uuid.UUID | None = None,
    sign_out_tokens: bool = False,
) -> PasswordSet:
    """Store a new password hash, end the user's sessions but `keep` and the second steps
    of sign-ins made with the old password; with `sign_out_tokens`, every access token
    issued until now is refused too."""
    now = utcnow()
    user.password_hash = hashed
    user.password_changed_at = now
    if sign_out_tokens:
        user.tokens_valid_after = now
    sessions.void_pending(session, user.id, TokenPurpose.MFA_LOGIN, now)
    ended = sessions.revoke_all(session, user.id, reason=reason, keep=keep)
    return PasswordSet(user.id, now, ended)


def request_reset(
    db: sessionmaker[Session],
    submissions: Submissions,
    throttles: Throttles,
    email: str,
    *,
    client: Client,
) -> None:
    """Queue `auth.send_password_reset` for an address, whether it has an account or not
    (the job finds out): the request does the same work either way. 429 past the client
    address's limit; past the address's own limit the request is silently dropped."""
    address = _limited_request(throttles, "reset", email, client)
    if address is None:
        return
    with transaction(db) as session:
        job = _queue(session, submissions, "auth.send_password_reset", {"email": address})
    submissions.publish_written([job])


def reset_password(
    db: sessionmaker[Session],
    submissions: Submissions,
    token: str,
    new: str,
    *,
    client: Client,
) -> PasswordSet:
    """Set a new password with a reset token (used up): the address counts as verified (its
    owner read the email), every session and access token of the account ends, and a notice
    goes out."""
    with transaction(db) as session:
        row = _claim(session, token, TokenPurpose.PASSWORD_RESET)
        user = session.get(User, row.user_id, with_for_update=True)
        if user is None or not user.active:
            message = "this link is not valid for the account any more"
            raise InvalidRequestError(message, errors=[{"field": "token", "message": message}])
        hashed = _new_password_hash(new, user.email, "new_password")
        changed = _set_password(
            session, user, hashed, reason="password_reset", sign_out_tokens=True
        )
        if user.email_verified_at is None:
            user.email_verified_at = changed.when
        audit.record(session, "password_reset", client=client, actor_id=user.id, subject_id=user.id)
        job = _password_changed_notice(session, submissions, user.id, changed, client)
    submissions.publish_written([job])
    return changed


def _password_changed_notice(
    session: Session,
    submissions: Submissions,
    user_id: uuid.UUID,
    changed: PasswordSet,
    client: Client,
) -> Job:
    """Queue the `password_changed` notice in `session`'s transaction."""
    context = {"when": moment(changed.when), "ip": client.ip or "unknown"}
    return queue_notice(session, submissions, user_id, "password_changed", context)


# --- accounts an admin makes on the server ------------------------------------------------------


def create_verified(
    db: sessionmaker[Session], email: str, role: Role, password: str | None
) -> User:
    """An account an admin made (`conveyor users create`): its address counts as verified;
    with a password (checked against the rules), it can sign in at once."""
    address = normalize_email(email)
    hashed = None if password is None else _new_password_hash(password, address, "password")
    with transaction(db) as session:
        if session.scalar(select(User.id).where(User.email == address)) is not None:
            raise ConflictError(f"a user with email {address} already exists")
        user = User(
            id=uuid7(),
            email=address,
            role=Role(role).value,
            password_hash=hashed,
            email_verified_at=utcnow(),
        )
        session.add(user)
        session.flush()
        audit.record(session, "registered", subject_id=user.id, by="cli")
    return user


def set_password(db: sessionmaker[Session], email: str, password: str) -> User:
    """Set an account's password on the server (`conveyor users password`): every session
    and access token of the account ends."""
    address = normalize_email(email)
    with transaction(db) as session:
        user = session.scalar(select(User).where(User.email == address).with_for_update())
        if user is None:
            raise NotFoundError(f"no user with email {address}")
        hashed = _new_password_hash(password, address, "password")
        _set_password(session, user, hashed, reason="password_reset", sign_out_tokens=True)
        audit.record(session, "password_changed", subject_id=user.id, by="cli")
    return user
