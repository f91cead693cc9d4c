"""A new user's whole way in, over the HTTP API of the real processes: register, verify the
address from the email the auth pool sent, sign in, turn on TOTP, sign in with it, refresh,
make an API key and submit a job with it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from conveyor.security import totp
from tests.e2e.processes import Processes
from tests.mail import Mailbox, smtp_server
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

EMAIL = "ada@example.com"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


def _mail_to(box: Mailbox, subject_part: str) -> EmailMessage:
    def arrived() -> EmailMessage | None:
        for mail in box.messages:
            if mail["To"] == EMAIL and subject_part.lower() in mail["Subject"].lower():
                return mail
        return None

    mail: EmailMessage = wait_until(arrived, timeout=30, interval=0.1)
    return mail


def _token_in(mail: EmailMessage) -> str:
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    match = re.search(r"#token=([A-Za-z0-9_\-.~%]+)", body.get_content())
    assert match, body.get_content()
    return match.group(1)


def _next_code(secret: str) -> str:
    """The authenticator's code of the next time step: one step ahead is accepted, and the
    current step may be used up already (a code is good once)."""
    return totp.code_at(secret, time.time() + totp.PERIOD)


def test_a_new_user_registers_verifies_signs_in_with_totp_and_submits_with_an_api_key(
    procs: Processes, platform_env: dict[str, str], mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    _, anonymous = procs.web(platform_env)
    env = {
        **platform_env,
        "CONVEYOR_SMTP_PORT": str(port),
        "CONVEYOR_PUBLIC_URL": anonymous.base_url,
        "CONVEYOR_MAIL_FROM": "Conveyor <noreply@example.com>",
    }
    for pool in ("auth", "notifications", "system"):
        procs.worker(env, pool=pool)

    # Register; the auth pool emails a verification link.
    status, body = anonymous.request(
        "POST", "/v1/auth/register", {"email": EMAIL, "password": PASSWORD, "name": "Ada"}
    )
    assert status == 202, body
    status, body = anonymous.request(
        "POST", "/v1/auth/login", {"email": EMAIL, "password": PASSWORD}
    )
    assert status == 403 and "verify" in body["detail"], body  # not verified yet
    verification = _token_in(_mail_to(box, "confirm your email"))
    status, body = anonymous.request("POST", "/v1/auth/verify-email", {"token": verification})
    assert status == 204, body
    status, body = anonymous.request("POST", "/v1/auth/verify-email", {"token": verification})
    assert status in (400, 422), body  # single use

    # Sign in with the password.
    status, tokens = anonymous.request(
        "POST", "/v1/auth/login", {"email": EMAIL, "password": PASSWORD}
    )
    assert status == 200 and tokens["token_type"] == "Bearer", tokens
    me = anonymous.with_token(tokens["access_token"])
    status, profile = me.request("GET", "/v1/me")
    assert status == 200 and profile["email"] == EMAIL and not profile["mfa_enabled"], profile

    # Turn on TOTP.
    status, enrolment = me.request("POST", "/v1/me/mfa/totp", {"password": PASSWORD})
    assert status == 200, enrolment
    assert enrolment["provisioning_uri"].startswith("otpauth://totp/")
    secret = enrolment["secret"]
    status, confirmed = me.request(
        "POST", "/v1/me/mfa/totp/confirm", {"code": totp.code_at(secret)}
    )
    assert status == 200 and len(confirmed["recovery_codes"]) == 10, confirmed
    assert _mail_to(box, "two-step sign-in settings changed")

    # Sign in again: the password, then the code.
    status, challenge = anonymous.request(
        "POST", "/v1/auth/login", {"email": EMAIL, "password": PASSWORD}
    )
    assert status == 200 and challenge["mfa_required"], challenge
    assert "access_token" not in challenge
    status, tokens = anonymous.request(
        "POST",
        "/v1/auth/login/mfa",
        {"mfa_token": challenge["mfa_token"], "code": _next_code(secret)},
    )
    assert status == 200, tokens
    assert _mail_to(box, "new sign-in")  # the account's first sign-in was not announced

    # Refresh: a new pair; the old refresh token is used up.
    status, refreshed = anonymous.request(
        "POST", "/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}
    )
    assert status == 200 and refreshed["refresh_token"] != tokens["refresh_token"], refreshed
    me = anonymous.with_token(refreshed["access_token"])

    # An API key, shown once, submits a job.
    status, key = me.request(
        "POST", "/v1/me/api-keys", {"name": "ci", "scopes": ["jobs:read", "jobs:write"]}
    )
    assert status == 201 and key["key"].startswith("cvk_"), key
    machine = anonymous.with_token(key["key"])
    job = machine.submit("system.echo", {"message": "hello"})
    assert machine.wait_finished(job["id"])["status"] == "succeeded"
    status, listed = me.request("GET", "/v1/me/api-keys")
    assert status == 200 and "key" not in listed["items"][0], listed

    # The account's own security stays out of an API key's reach.
    status, body = machine.request("GET", "/v1/me/sessions")
    assert status == 403, body
