"""Accounts end to end: the auth pool on the real broker mails the verification and reset
links (over SMTP, to an aiosmtpd server), and the links' tokens finish the flows over HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import select

from conveyor.actors import auth as auth_actors
from conveyor.models import Job, JobStatus
from conveyor.notifications import resources
from conveyor.notifications.channels import TEMPLATES, resource_name
from conveyor.notifications.email import SmtpChannel
from tests.mail import Mailbox, smtp_server
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.integration

PASSWORD = "a long unusual passphrase"
PUBLIC_URL = "https://jobs.example.com"


@pytest.fixture
def stack_settings() -> dict[str, Any]:
    return {"public_url": PUBLIC_URL}


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def mail_stack(stack: Stack, mailbox: tuple[Mailbox, int]) -> tuple[Stack, Mailbox]:
    """The stack serving the auth and notifications pools, its email going to aiosmtpd."""
    handler, port = mailbox
    smtp = stack.settings.model_copy(update={"smtp_port": port})
    for name, factory in {**resources.resources(), **auth_actors.resources()}.items():
        if name == resource_name("email"):
            stack.container.register(name, lambda _c: SmtpChannel(smtp))
        elif name == TEMPLATES:
            stack.container.register(name, lambda _c: resources.templates(smtp))
        else:
            stack.container.register(name, factory)
    return stack, handler


def _mail(mailbox: Mailbox, count: int) -> EmailMessage:
    wait_until(lambda: mailbox.count() >= count, timeout=30)
    return mailbox.messages[count - 1]


def _link_token(mail: EmailMessage, page: str) -> str:
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    match = re.search(rf"{re.escape(PUBLIC_URL + page)}#token=([A-Za-z0-9_-]+)", text)
    assert match is not None, text
    return match.group(1)


def _jobs_done(stack: Stack, job_type: str) -> list[Job]:
    with stack.db() as session:
        jobs = list(session.scalars(select(Job).where(Job.type == job_type)))
    return jobs if jobs and all(j.status == JobStatus.SUCCEEDED for j in jobs) else []


async def test_a_new_account_verifies_its_address_then_resets_its_password(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    client = stack.client
    registered = await client.post(
        "/v1/auth/register", json={"email": "new@example.com", "password": PASSWORD}
    )
    assert registered.status == 202, await registered.text()
    verify = _mail(mailbox, 1)
    assert verify["To"] == "new@example.com"
    token = _link_token(verify, "/verify-email")

    refused = await client.post(
        "/v1/auth/login", json={"email": "new@example.com", "password": PASSWORD}
    )
    assert refused.status == 403  # not verified yet
    verified = await client.post("/v1/auth/verify-email", json={"token": token})
    assert verified.status == 204, await verified.text()
    signed_in = await client.post(
        "/v1/auth/login", json={"email": "new@example.com", "password": PASSWORD}
    )
    assert signed_in.status == 200, await signed_in.text()

    # A reset for an address without an account sends nothing; one for the account does.
    for email in ("ghost@example.com", "new@example.com"):
        response = await client.post("/v1/auth/password-reset", json={"email": email})
        assert response.status == 202
    wait_until(lambda: len(_jobs_done(stack, "auth.send_password_reset")) == 2, timeout=30)
    reset = _mail(mailbox, 2)
    assert reset["To"] == "new@example.com"
    confirmed = await client.post(
        "/v1/auth/password-reset/confirm",
        json={"token": _link_token(reset, "/reset-password"), "new_password": "a new phrase!"},
    )
    assert confirmed.status == 204, await confirmed.text()
    notice = _mail(mailbox, 3)  # password_changed
    assert "was changed" in notice.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert mailbox.count() == 3
    old = await client.post(
        "/v1/auth/login", json={"email": "new@example.com", "password": PASSWORD}
    )
    assert old.status == 401
