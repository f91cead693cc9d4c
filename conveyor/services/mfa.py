"""Two-factor sign-in with TOTP: enrolment, its confirmation, recovery codes, turning it off,
and the second step of a sign-in.

The TOTP secret is stored sealed (AES-GCM, a key derived from the secret key, the user's id
as associated data). A code is good once: the step it matched is stored with a guarded
UPDATE, so two requests with the same code cannot both pass; a recovery code is used up the
same way. Every check counts against the account's attempt limit (CONVEYOR_MFA_RATE), the
current password's too; the second step of a sign-in counts against the client address's
sign-in limit as well (CONVEYOR_LOGIN_IP_RATE). Changing the second factor needs the current
password or, for an account without one, a sign-in of the last ten minutes."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, or_, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    InvalidRequestError,
    InvalidTokenError,
    NotFoundError,
    PermissionDeniedError,
)
from conveyor.models import AuthSession, Job, RecoveryCode, TokenPurpose, User
from conveyor.models.base import utcnow
from conveyor.security import totp
from conveyor.security.passwords import verify_password
from conveyor.security.sealing import Sealer, UnsealError
from conveyor.security.throttle import Throttle, too_many
from conveyor.services import audit, sessions
from conveyor.services.accounts import moment, queue_notice
from conveyor.services.audit import Client
from conveyor.services.auth import TokenConfig
from conveyor.services.jobs import rowcount
from conveyor.services.sessions import Lifetimes, Tokens
from conveyor.services.sign_in import notify_sign_in
from conveyor.services.submissions import Submissions
from conveyor.settings import SECRET_KEY_HINT, Settings

#: Separates the TOTP sealing key from every other key derived from the secret key.
SEALING_INFO = b"conveyor totp v1"
RECOVERY_CODES = 10
#: The `amr` value a second factor adds to a sign-in (RFC 8176), recovery codes included.
OTP = "otp"
_TOTP_CODE = re.compile(rf"[0-9]{{{totp.DIGITS}}}")
#: How recent the sign-in of an account without a password must be to change its second
#: factor: a stolen access token outlives it, a user who just signed in does not.
FRESH_SIGN_IN = dt.timedelta(minutes=10)


def sealer_of(settings: Settings) -> Sealer:
    """The sealer of TOTP secrets; ConfigurationError without CONVEYOR_SECRET_KEY."""
    if settings.secret_key is None:
        raise ConfigurationError(
            f"CONVEYOR_SECRET_KEY is not set: it encrypts the TOTP secrets; {SECRET_KEY_HINT}"
        )
    return Sealer(settings.secret_key.get_secret_value(), SEALING_INFO)


@dataclass(frozen=True)
class Checker:
    """What checks a second factor: the sealer of TOTP secrets and the attempt limit; the
    submissions that queue the notices of changes (`mfa_changed`, `new_sign_in`); and the
    sign-in limit of client addresses, which the second step of a sign-in counts against."""

    sealer: Sealer
    throttle: Throttle
    submissions: Submissions
    login_ip: Throttle

    def count_attempt(self, user_id: uuid.UUID) -> None:
        """Count one attempt on the account; TooManyRequestsError (429) past the limit."""
        decision = self.throttle.hit(_throttle_key(user_id))
        if not decision.allowed:
            raise too_many(decision, "second-factor attempts for this account", field="code")


@dataclass(frozen=True)
class Enrolment:
    """A pending TOTP secret, shown once, and the URI an authenticator app reads."""

    secret: str
    provisioning_uri: str


@dataclass(frozen=True)
class Enabled:
    """MFA is on: new tokens of a session that used it, and the recovery codes (shown once)."""

    tokens: Tokens
    recovery_codes: list[str]


def _throttle_key(user_id: uuid.UUID) -> str:
    return f"mfa:account:{user_id}"


def _user_for_update(session: Session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id, with_for_update=True)
    if user is None or not user.active:
        raise NotFoundError("the account does not exist or is disabled")
    return user


def _reauthenticate(
    session: Session, user: User, password: str | None, session_id: uuid.UUID | None
) -> None:
    """InvalidRequestError (naming `password`) unless `password` is the user's, when they
    have one; without one, PermissionDeniedError unless the caller's session (`session_id`)
    began within FRESH_SIGN_IN. A stolen access token alone does not change the second
    factor."""
    if user.password_hash is None:
        _require_fresh_sign_in(session, user, session_id)
        return
    if not password or not verify_password(user.password_hash, password):
        message = "required, and must be your current password"
        raise InvalidRequestError(
            "the current password is missing or wrong",
            errors=[{"field": "password", "message": message}],
        )


def _require_fresh_sign_in(session: Session, user: User, session_id: uuid.UUID | None) -> None:
    """PermissionDeniedError unless `session_id` is a session of `user` that began within
    FRESH_SIGN_IN (an account without a password has nothing else to prove itself with)."""
    began = None if session_id is None else session.get(AuthSession, session_id)
    if began is None or began.user_id != user.id or began.created_at < utcnow() - FRESH_SIGN_IN:
        minutes = int(FRESH_SIGN_IN.total_seconds() // 60)
        raise PermissionDeniedError(
            f"sign in again to change two-factor settings (a sign-in of the last {minutes} "
            "minutes is needed)"
        )


def _wrong_code(error: type[InvalidRequestError | AuthenticationError]) -> Exception:
    return error(
        "the code is wrong, or was used before",
        errors=[{"field": "code", "message": "not a current TOTP code or unused recovery code"}],
    )


def _secret_of(sealer: Sealer, user: User) -> str:
    assert user.totp_secret is not None
    try:
        return sealer.open(user.totp_secret, user.id.bytes)
    except UnsealError as exc:
        raise ConfigurationError(
            "a TOTP secret does not open with this CONVEYOR_SECRET_KEY (was it changed?)"
        ) from exc


def _use_totp(session: Session, sealer: Sealer, user: User, code: str) -> bool:
    """Whether `code` is the user's current TOTP code, not used before; its step is stored
    by a guarded UPDATE, so of two requests with the same code only one passes."""
    step = totp.verify(_secret_of(sealer, user), code, last_step=user.totp_last_step)
    if step is None:
        return False
    claimed = session.execute(
        update(User)
        .where(
            User.id == user.id,
            or_(User.totp_last_step.is_(None), User.totp_last_step < step),
        )
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    if rowcount(claimed) != 1:
        return False
    user.totp_last_step = step
    return True


def _use_recovery_code(session: Session, user: User, code: str, client: Client) -> bool:
    """Whether `code` is one of the user's unused recovery codes; it is used up (a guarded
    UPDATE) and the use recorded."""
    used = session.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.code_hash == totp.hash_recovery_code(code),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if rowcount(used) != 1:
        return False
    audit.record(session, "recovery_code_used", client=client, actor_id=user.id, subject_id=user.id)
    return True


def _use_second_factor(
    session: Session, sealer: Sealer, user: User, code: str, client: Client
) -> bool:
    """Whether `code` is a current TOTP code or an unused recovery code of the user; either
    is then used up."""
    if _TOTP_CODE.fullmatch(code.replace(" ", "")):
        return _use_totp(session, sealer, user, code)
    return _use_recovery_code(session, user, code, client)


def _new_recovery_codes(session: Session, user_id: uuid.UUID) -> list[str]:
    """Fresh recovery codes for the user (stored hashed), the old ones deleted."""
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    codes = totp.new_recovery_codes(RECOVERY_CODES)
    now = utcnow()
    session.add_all(
        RecoveryCode(user_id=user_id, code_hash=totp.hash_recovery_code(code), created_at=now)
        for code in codes
    )
    return codes


def begin_enrolment(
    db: sessionmaker[Session],
    checker: Checker,
    user_id: uuid.UUID,
    *,
    password: str | None,
    session_id: uuid.UUID | None,
    issuer: str,
) -> Enrolment:
    """A new pending TOTP secret for the user (replacing a pending one); ConflictError when
    MFA is already on. Needs the current password, or for a user without one, a recent
    sign-in (`session_id`, the caller's session)."""
    checker.count_attempt(user_id)
    with transaction(db) as session:
        user = _user_for_update(session, user_id)
        if user.mfa_enabled:
            raise ConflictError("two-factor sign-in is already on: turn it off first")
        _reauthenticate(session, user, password, session_id)
        secret = totp.new_secret()
        user.totp_secret = checker.sealer.seal(secret, user.id.bytes)
        user.totp_last_step = None
        return Enrolment(secret, totp.provisioning_uri(secret, user.email, issuer))


def confirm_enrolment(
    db: sessionmaker[Session],
    checker: Checker,
    config: TokenConfig,
    lifetimes: Lifetimes,
    user_id: uuid.UUID,
    code: str,
    *,
    amr: Sequence[str],
    client: Client,
) -> Enabled:
    """Turn MFA on with a code of the pending secret: recovery codes are made, and a new
    session opened whose sign-in counts the second factor (`amr` plus `otp`)."""
    checker.count_attempt(user_id)
    with transaction(db) as session:
        user = _user_for_update(session, user_id)
        if user.mfa_enabled:
            raise ConflictError("two-factor sign-in is already on")
        if user.totp_secret is None:
            raise ConflictError("no enrolment under way: POST /v1/me/mfa/totp first")
        if not _use_totp(session, checker.sealer, user, code):
            raise _wrong_code(InvalidRequestError)
        user.totp_enabled_at = utcnow()
        codes = _new_recovery_codes(session, user.id)
        audit.record(session, "mfa_enabled", client=client, actor_id=user.id, subject_id=user.id)
        notice = _changed(session, checker, user, "totp_enabled", client)
        methods = [*dict.fromkeys([*amr, OTP])]
        tokens = sessions.start(session, config, lifetimes, user, amr=methods, client=client)
    checker.submissions.publish_written([notice])
    return Enabled(tokens, codes)


def _changed(session: Session, checker: Checker, user: User, change: str, client: Client) -> Job:
    """Queue the `mfa_changed` notice of `change` in `session`'s transaction."""
    context = {"change": change, "when": moment(utcnow()), "ip": client.ip or "unknown"}
    return queue_notice(session, checker.submissions, user.id, "mfa_changed", context)


def _enabled_user(session: Session, user_id: uuid.UUID) -> User:
    user = _user_for_update(session, user_id)
    if not user.mfa_enabled:
        raise ConflictError("two-factor sign-in is not on")
    return user


def disable(
    db: sessionmaker[Session],
    checker: Checker,
    user_id: uuid.UUID,
    *,
    password: str | None,
    session_id: uuid.UUID | None,
    code: str,
    client: Client,
) -> None:
    """Turn MFA off, with a current code (TOTP or recovery) and the password, or for a user
    without one, a recent sign-in: the secret and the recovery codes are deleted."""
    checker.count_attempt(user_id)
    with transaction(db) as session:
        user = _enabled_user(session, user_id)
        _reauthenticate(session, user, password, session_id)
        if not _use_second_factor(session, checker.sealer, user, code, client):
            raise _wrong_code(InvalidRequestError)
        user.totp_secret = None
        user.totp_enabled_at = None
        user.totp_last_step = None
        session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
        audit.record(session, "mfa_disabled", client=client, actor_id=user.id, subject_id=user.id)
        notice = _changed(session, checker, user, "totp_disabled", client)
    checker.submissions.publish_written([notice])


def regenerate_recovery_codes(
    db: sessionmaker[Session],
    checker: Checker,
    user_id: uuid.UUID,
    code: str,
    *,
    session_id: uuid.UUID | None,
    client: Client,
) -> list[str]:
    """New recovery codes (the old ones stop working), with a current code; for a user
    without a password, from a recent sign-in (`session_id`) only."""
    checker.count_attempt(user_id)
    with transaction(db) as session:
        user = _enabled_user(session, user_id)
        if user.password_hash is None:
            _require_fresh_sign_in(session, user, session_id)
        if not _use_second_factor(session, checker.sealer, user, code, client):
            raise _wrong_code(InvalidRequestError)
        codes = _new_recovery_codes(session, user.id)
        audit.record(
            session,
            "recovery_codes_regenerated",
            client=client,
            actor_id=user.id,
            subject_id=user.id,
        )
        notice = _changed(session, checker, user, "recovery_codes_regenerated", client)
    checker.submissions.publish_written([notice])
    return codes


def finish_sign_in(
    db: sessionmaker[Session],
    checker: Checker,
    config: TokenConfig,
    lifetimes: Lifetimes,
    mfa_token: str,
    code: str,
    *,
    client: Client,
) -> Tokens:
    """The second step of a sign-in: the challenge's `mfa_token` (single use, 5 minutes) and a
    TOTP or recovery code give a session. A wrong code leaves the token usable until the
    account's attempt limit, which uses it up (429); an unknown, used or expired token, or one
    of a disabled account, is an InvalidTokenError (401). Every attempt counts against the
    client address's sign-in limit too (429 past it)."""
    by_ip = checker.login_ip.hit(f"login:mfa:ip:{client.ip}")
    if not by_ip.allowed:
        raise too_many(by_ip, "sign-in attempts from this address")
    now = utcnow()
    with transaction(db) as session:
        found = sessions.live_token(session, mfa_token, TokenPurpose.MFA_LOGIN, now)
        if found is None:
            raise InvalidTokenError("unknown, used or expired mfa_token: sign in again")
        token, user = found
        if not user.active or not user.mfa_enabled:
            raise InvalidTokenError("the account is disabled or no longer uses MFA")
        account_key = _throttle_key(user.id)
        decision = checker.throttle.hit(account_key)
        if decision.allowed and _use_second_factor(session, checker.sealer, user, code, client):
            if not sessions.use_up(session, token.id, now):
                raise InvalidTokenError("this mfa_token was used: sign in again")
            amr = [*dict.fromkeys([*token.data.get("amr", []), OTP])]
            tokens = sessions.start(session, config, lifetimes, user, amr=amr, client=client)
            notice = notify_sign_in(session, checker.submissions, user.id, client, amr)
            signed_in = True
        else:
            signed_in = False
            if not decision.allowed:
                sessions.use_up(session, token.id, now)
            audit.record(session, "login_failed", client=client, subject_id=user.id, reason="mfa")
            if decision.allowed and decision.remaining == 0:
                audit.record(
                    session,
                    "lockout",
                    client=client,
                    subject_id=user.id,
                    reason="mfa",
                    window_seconds=checker.throttle.rule.window,
                )
    if signed_in:
        # Only now: a sign-in rolled back (a race lost) must not clear the account's count.
        checker.throttle.reset(account_key)
        checker.submissions.publish_written([notice])
        return tokens
    # Committed: the failure is recorded (and, past the limit, the token used up).
    if not decision.allowed:
        raise too_many(decision, "second-factor attempts for this account: sign in again")
    raise _wrong_code(AuthenticationError)
