"""The account services behind the routes and the auth pool: the client address behind
proxies, one link per job however often it runs, the silent per-address limit, the purge."""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid

from sqlalchemy import func, select

from conveyor.http.auth import client_address
from conveyor.models import (
    AuthSession,
    Job,
    Notification,
    OneTimeToken,
    RefreshToken,
    TokenPurpose,
    User,
)
from conveyor.models.base import utcnow
from conveyor.notifications.resources import templates
from conveyor.security.throttle import MemoryStore, Rule, Throttle
from conveyor.services import accounts, auth_retention
from conveyor.services.account_mail import Mailer
from conveyor.services.audit import Client
from tests.stack import Stack

PROXIES = (ipaddress.ip_network("10.0.0.0/8"),)


def test_forwarded_addresses_are_believed_only_from_trusted_proxies() -> None:
    assert client_address("203.0.113.9", "198.51.100.1", PROXIES) == "203.0.113.9"
    assert client_address("10.0.0.2", "198.51.100.1", PROXIES) == "198.51.100.1"
    # A client's own X-Forwarded-For entry sits left of what the proxies appended.
    assert client_address("10.0.0.2", "1.2.3.4, 198.51.100.1, 10.0.0.3", PROXIES) == (
        "198.51.100.1"
    )
    assert client_address("10.0.0.2", "not-an-ip", PROXIES) == "10.0.0.2"
    assert client_address("10.0.0.2", "", ()) == "10.0.0.2"


def _user(stack: Stack, email: str) -> User:
    with stack.db.begin() as session:
        user = User(email=email, password_hash="x")
        session.add(user)
    return user


def _mailer(stack: Stack) -> Mailer:
    return Mailer(stack.db, stack.container.submissions, templates(stack.settings), None)


def _count(stack: Stack, model: type[object], *where: object) -> int:
    with stack.db() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_a_retried_verification_job_sends_once_and_leaves_one_link(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    user = _user(stack, "retry@example.com")
    job_id = uuid.uuid4()
    mailer = _mailer(stack)
    assert mailer.send_verification(user.id, job_id) is True
    assert mailer.send_verification(user.id, job_id) is False
    assert _count(stack, Notification, Notification.owner_id == user.id) == 1
    assert _count(stack, OneTimeToken, OneTimeToken.user_id == user.id) == 1


def test_a_token_minted_but_not_sent_is_replaced_by_the_retry(embedded_stack: Stack) -> None:
    stack = embedded_stack
    user = _user(stack, "crash@example.com")
    job_id = uuid.uuid4()
    lost = accounts.mint_token(
        stack.db, user, TokenPurpose.PASSWORD_RESET, accounts.RESET_TTL, job_id
    )  # the attempt died before its email was made
    assert _mailer(stack).send_password_reset("crash@example.com", job_id) is True
    with stack.db() as session:
        rows = list(session.scalars(select(OneTimeToken).where(OneTimeToken.user_id == user.id)))
    assert [row.id for row in rows] == [job_id]
    assert rows[0].token_hash != accounts.hash_secret(lost)


def test_a_reset_for_an_unknown_or_disabled_address_sends_nothing(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    user = _user(stack, "off@example.com")
    with stack.db.begin() as session:
        session.get(User, user.id).active = False  # type: ignore[union-attr]
    mailer = _mailer(stack)
    assert mailer.send_password_reset("nobody@example.com", uuid.uuid4()) is False
    assert mailer.send_password_reset("off@example.com", uuid.uuid4()) is False
    assert _count(stack, OneTimeToken) == 0


def test_requests_past_an_address_limit_are_dropped_without_a_sign(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    rule = Rule.parse("2/1h")
    store = MemoryStore()
    throttles = accounts.Throttles(
        login_account=Throttle(store, rule),
        login_ip=Throttle(store, rule),
        reset=Throttle(store, Rule.parse("2/1h")),
        mfa=Throttle(store, rule),
    )
    for n in range(3):  # three clients, one address
        accounts.request_reset(
            stack.db,
            stack.container.submissions,
            throttles,
            "same@example.com",
            client=Client(ip=f"192.0.2.{n}"),
        )
    assert _count(stack, Job, Job.type == "auth.send_password_reset") == 2
    for n in range(3):  # registrations of one address share the limit's rule, not its count
        accounts.register(
            stack.db,
            stack.container.submissions,
            throttles,
            "same@example.com",
            "a long unusual passphrase",
            None,
            client=Client(ip=f"192.0.2.{n}"),
        )
    # the first made the account, the second told its owner, the third was dropped
    assert _count(stack, Job, Job.type == "auth.send_verification") == 1
    assert _count(stack, Job, Job.type == "auth.send_notice") == 1


def test_the_purge_deletes_what_expired_long_enough_ago(embedded_stack: Stack) -> None:
    stack = embedded_stack
    user = _user(stack, "purge@example.com")
    now = utcnow()
    long_ago = now - dt.timedelta(days=31)
    with stack.db.begin() as session:
        for n, expires in enumerate([long_ago, now + dt.timedelta(hours=1)]):
            session.add(
                OneTimeToken(
                    purpose="verify_email",
                    user_id=user.id,
                    token_hash=f"{n}" * 64,
                    expires_at=expires,
                )
            )
        ended = AuthSession(user_id=user.id, expires_at=now, revoked_at=long_ago)
        live = AuthSession(user_id=user.id, expires_at=now + dt.timedelta(days=1))
        session.add_all([ended, live])
        session.flush()
        session.add(RefreshToken(session_id=ended.id, token_hash="e" * 64, expires_at=long_ago))
    counts = auth_retention.purge_expired(stack.db)
    assert counts == {
        "one_time_tokens": 1,
        "refresh_tokens": 1,
        "recovery_codes": 0,
        "auth_sessions": 1,
    }
    assert _count(stack, OneTimeToken) == 1 and _count(stack, AuthSession) == 1


def test_the_purge_is_submitted_once_an_hour(embedded_stack: Stack) -> None:
    stack = embedded_stack
    # The web process's sweeper offers the current hour's (every minute).
    hourly = stack.container.sweeper.hourly
    assert hourly is not None
    hourly()
    hourly()
    assert _count(stack, Job, Job.type == auth_retention.PURGE_JOB) == 1
    hour = dt.datetime(2020, 1, 1, 7, 5, tzinfo=dt.UTC)
    submissions = stack.container.submissions
    assert auth_retention.queue_purge(stack.db, submissions, hour) is True
    assert (
        auth_retention.queue_purge(stack.db, submissions, hour + dt.timedelta(minutes=50)) is False
    )
    assert auth_retention.queue_purge(stack.db, submissions, hour + dt.timedelta(hours=1)) is True
