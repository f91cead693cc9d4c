"""Signing in with a password: the first factor, its limits, and what it records.

An unknown address, a wrong password and a disabled account fail alike, at the cost of one
argon2 check each, so neither the answer nor its time tells whether an account exists; the
audit log alone says which it was.
"""

from __future__ import annotations

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
from conveyor.security.throttle import too_many
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
    a right password for an unverified address is a 403. Failures count against the
    account's limit, every attempt against the client address's (429 past either)."""
    address = normalize_email(email)
    by_ip = throttles.login_ip.hit(f"login:ip:{client.ip}")
    if not by_ip.allowed:
        raise too_many(by_ip, "sign-in attempts from this address")
    account_key = f"login:account:{address}"
    held = throttles.login_account.peek(account_key)
    if not held.allowed:
        raise too_many(held, "failed sign-ins for this account", field="email")
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
                jobs.append(
                    queue_notice(
                        session,
                        submissions,
                        user.id,
                        "new_sign_in",
                        sign_in_facts(client, "password"),
                    )
                )
        else:
            _failed(session, throttles, account_key, user, failure, client)
    if failure == "unverified":
        raise PermissionDeniedError("verify your email address first: open the link we sent")
    if failure is not None:
        raise AuthenticationError(WRONG_CREDENTIALS)
    throttles.login_account.reset(account_key)
    submissions.publish_written(jobs)
    return result


def sign_in_facts(client: Client, method: str) -> dict[str, Any]:
    """The context of a `new_sign_in` notice: when, from where, with what."""
    return {
        "when": moment(utcnow()),
        "ip": client.ip or "unknown",
        "user_agent": client.user_agent or "unknown",
        "method": method,
    }


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
    account_key: str,
    user: User | None,
    reason: str | None,
    client: Client,
) -> None:
    """Record a failed sign-in; a wrong credential counts against the account's limit, and
    the failure that reaches it records a `lockout`."""
    subject = user.id if user is not None else None
    audit.record(session, "login_failed", client=client, subject_id=subject, reason=reason)
    if reason == "unverified":
        return
    counted = throttles.login_account.hit(account_key)
    if counted.remaining == 0:
        audit.record(
            session,
            "lockout",
            client=client,
            subject_id=subject,
            window_seconds=throttles.login_account.rule.window,
        )
