"""Signing in with a password: the first factor, its limits, and what it records.

An unknown address, a wrong password and a disabled account fail alike, at the cost of one
argon2 check each, so neither the answer nor its time tells whether an account exists; the
audit log alone says which it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import AuthenticationError, PermissionDeniedError
from conveyor.models import Job, User
from conveyor.models.base import utcnow
from conveyor.security.passwords import (
    dummy_verify,
    hash_password,
    needs_rehash,
    verify_password,
)
from conveyor.security.throttle import Decision, too_many
from conveyor.services import audit, sessions
from conveyor.services.accounts import Throttles, moment, queue_notice
from conveyor.services.audit import Client
from conveyor.services.auth import TokenConfig
from conveyor.services.sessions import Lifetimes, MfaChallenge, Tokens
from conveyor.services.submissions import Submissions
from conveyor.services.users import normalize_email

#: What every failed sign-in hears; the audit log records why it failed.
WRONG_CREDENTIALS = "wrong email or password"


def login(
    db: sessionmaker[Session],
    submissions: Submissions,
    config: TokenConfig,
    lifetimes: Lifetimes,
    throttles: Throttles,
    email: str,
    password: str,
    *,
    client: Client,
) -> Tokens | MfaChallenge:
    """Sign in with a password: tokens, or the challenge of the second step for a user with
    MFA. An unknown address, a wrong password and a disabled account all fail alike (401);
    a right password for an unverified address is a 403. Every attempt counts against the
    client address's limit and, before its password is checked (so concurrent guesses cannot
    outrun it), against the account's; a right password clears the account's (429 past
    either)."""
    address = normalize_email(email)
    by_ip = throttles.login_ip.hit(f"login:ip:{client.ip}")
    if not by_ip.allowed:
        raise too_many(by_ip, "sign-in attempts from this address")
    account_key = f"login:account:{address}"
    counted = throttles.login_account.hit(account_key)
    if not counted.allowed:
        raise too_many(counted, "failed sign-ins for this account", field="email")
    jobs: list[Job] = []
    with transaction(db) as session:
        user = session.scalar(select(User).where(User.email == address))
        failure = _first_factor(user, password)
        if user is not None and failure is None:
            if needs_rehash(user.password_hash or ""):
                user.password_hash = hash_password(password)
            first = user.last_login_at is None
            result = sessions.sign_in(session, config, lifetimes, user, amr=["pwd"], client=client)
            if isinstance(result, Tokens) and not first:
                jobs.append(notify_sign_in(session, submissions, user.id, client, ["pwd"]))
        else:
            _failed(session, throttles, counted, user, failure, client)
    if failure in (None, "unverified"):  # the right password
        throttles.login_account.reset(account_key)
    if failure == "unverified":
        raise PermissionDeniedError("verify your email address first: open the link we sent")
    if failure is not None:
        raise AuthenticationError(WRONG_CREDENTIALS)
    submissions.publish_written(jobs)
    return result


def notify_sign_in(
    session: Session,
    submissions: Submissions,
    user_id: uuid.UUID,
    client: Client,
    amr: Sequence[str],
    *,
    kind: str = "new_sign_in",
) -> Job:
    """Queue the notice of a sign-in made with `amr` (`new_sign_in`: when, from where, with
    what) in `session`'s transaction; publish it after the commit."""
    return queue_notice(session, submissions, user_id, kind, sign_in_facts(client, amr))


def sign_in_facts(client: Client, amr: Sequence[str]) -> dict[str, Any]:
    """What a sign-in notice says: when, from where, with what."""
    return {
        "when": moment(utcnow()),
        "ip": client.ip or "unknown",
        "user_agent": client.user_agent or "unknown",
        "method": method_words(amr),
    }


def method_words(amr: Sequence[str]) -> str:
    """How a notice names the way of a sign-in: `password and one-time code`,
    `corp (OpenID Connect)`."""
    words = {"pwd": "password", "otp": "one-time code"}
    return " and ".join(
        words.get(m, f"{m.removeprefix('oidc:')} (OpenID Connect)" if m.startswith("oidc:") else m)
        for m in amr
    )


def _first_factor(user: User | None, password: str) -> str | None:
    """Why the password does not sign `user` in (`unknown`, `wrong_password`, `disabled`,
    `no_password`, `unverified`), or None. Every path checks one argon2 hash."""
    if user is None or user.password_hash is None:
        dummy_verify(password)
        return "unknown" if user is None else "no_password"
    if not verify_password(user.password_hash, password):
        return "wrong_password"
    if not user.active:
        return "disabled"
    if user.email_verified_at is None:
        return "unverified"
    return None


def _failed(
    session: Session,
    throttles: Throttles,
    counted: Decision,
    user: User | None,
    reason: str | None,
    client: Client,
) -> None:
    """Record a failed sign-in; a wrong credential that used the account's last attempt
    (`counted`) records a `lockout` too."""
    subject = user.id if user is not None else None
    audit.record(session, "login_failed", client=client, subject_id=subject, reason=reason)
    if reason == "unverified":
        return
    if counted.remaining == 0:
        audit.record(
            session,
            "lockout",
            client=client,
            subject_id=subject,
            window_seconds=throttles.login_account.rule.window,
        )
