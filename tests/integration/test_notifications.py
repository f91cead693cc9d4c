"""Notifications end to end: the API, the notifications.deliver job on a real worker, real
PostgreSQL and RabbitMQ, and real SMTP mail received by an aiosmtpd server."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update

from conveyor.client import AsyncClient, Client
from conveyor.client import InvalidRequestError as ClientInvalidRequestError
from conveyor.client import Notification as ClientNotification
from conveyor.errors import InvalidRequestError
from conveyor.models import Delivery, Job, JobEvent, JobStatus, Notification, User
from conveyor.models.base import utcnow
from conveyor.notifications import resources
from conveyor.notifications.channels import TEMPLATES, resource_name
from conveyor.notifications.email import SmtpChannel
from conveyor.notifications.http_channels import verify_signature
from conveyor.notifications.ratelimit import limited
from conveyor.notifications.templates import Templates
from conveyor.services import notifications
from tests.fake_provider import Answer, FakeProvider, fake_provider
from tests.mail import Mailbox, smtp_server
from tests.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("broker_kind", ["rabbitmq"])]


WEBHOOK_SECRET = "test-webhook-secret-long-enough"


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    """A fake HTTP provider: the webhook receiver and the SMS provider of these tests."""
    with fake_provider() as fake:
        yield fake


@pytest.fixture
def stack_settings(request: pytest.FixtureRequest, provider: FakeProvider) -> dict[str, Any]:
    """The stack's HTTP channels: webhooks signed, SMS to the fake provider (allowed); and
    the settings of a `stack_overrides` marker."""
    marker = request.node.get_closest_marker("stack_overrides")
    return {
        "outbound_allow_hosts": "127.0.0.1",
        "webhook_secret": WEBHOOK_SECRET,
        "sms_provider_url": provider.url("/sms"),
        "sms_provider_name": "fake-sms",
        **(marker.args[0] if marker else {}),
    }


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def mail_stack(
    request: pytest.FixtureRequest, stack: Stack, mailbox: tuple[Mailbox, int]
) -> tuple[Stack, Mailbox]:
    """The stack, its notifications pool sending email to the aiosmtpd server (under the
    rate limits of a `rate_limits` marker)."""
    handler, port = mailbox
    marker = request.node.get_closest_marker("rate_limits")
    kinds = request.node.get_closest_marker("kinds_dir")
    smtp = stack.settings.model_copy(
        update={
            "smtp_port": port,
            "notification_rate_limits": marker.args[0] if marker else None,
            "notification_templates_dir": request.getfixturevalue(kinds.args[0]) if kinds else None,
        }
    )
    for name, factory in resources.resources().items():
        if name == resource_name("email"):
            stack.container.register(name, lambda _c: limited(SmtpChannel(smtp), smtp))
        elif name == TEMPLATES:
            stack.container.register(name, lambda _c: resources.templates(smtp))
        else:
            stack.container.register(name, factory)
    return stack, handler


def _user_id(stack: Stack, email: str) -> str:
    with stack.db() as session:
        return str(session.scalars(select(User.id).where(User.email == email)).one())


async def _notify(
    stack: Stack,
    body: dict[str, Any],
    *,
    token: str | None = None,
    expect: int = 202,
    **headers: str,
) -> dict[str, Any]:
    response = await stack.client.post(
        "/v1/notifications", json=body, headers=stack.headers(token or stack.admin_token, **headers)
    )
    answer = await response.json()
    assert response.status == expect, answer
    return answer  # type: ignore[no-any-return]


async def _settled(stack: Stack, notification_id: str, within: float = 20.0) -> dict[str, Any]:
    """The notification once none of its deliveries is pending or sending."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        response = await stack.client.get(
            f"/v1/notifications/{notification_id}", headers=stack.headers(stack.admin_token)
        )
        body = await response.json()
        assert response.status == 200, body
        if all(d["status"] not in ("pending", "sending") for d in body["deliveries"]):
            return body  # type: ignore[no-any-return]
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)


async def _job_finished(stack: Stack, job_id: str) -> Job:
    job = await stack.wait_for(job_id, "succeeded", "failed", token=stack.admin_token)
    return stack.row(job["id"])


WELCOME = {"name": "Ada <3", "product": "Conveyor"}
RESET_URL = "https://jobs.example.com/reset?token=s3cret-token"


def _user(stack: Stack, email: str) -> User:
    with stack.db() as session:
        return session.scalars(select(User).where(User.email == email)).one()


def _send_reset(stack: Stack, email: str, key: str) -> notifications.Created:
    """A password reset email, as the auth pool sends it (a system kind, sensitive)."""
    return notifications.send_system(
        stack.db,
        stack.container.submissions,
        Templates(max_bytes=65536),
        _user(stack, email),
        "password_reset",
        {"reset_url": RESET_URL, "expires_minutes": 30},
        idempotency_key=key,
    )


async def test_an_email_arrives_over_smtp_with_both_parts_and_its_unsubscribe_link_works(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    member_id = _user_id(stack, "member@example.com")
    created = await _notify(
        stack, {"kind": "welcome", "recipients": [{"user_id": member_id}], "context": WELCOME}
    )
    assert [d["status"] for d in created["deliveries"]] == ["pending"]
    done = await _settled(stack, created["id"])
    (delivery,) = done["deliveries"]
    assert delivery["status"] == "sent", delivery
    assert delivery["attempts"] == 1 and delivery["provider"] == "smtp"
    assert delivery["sent_at"] is not None
    assert mailbox.count() == 1
    mail = mailbox.messages[0]
    assert mail["To"] == "member@example.com"
    assert mail["Subject"] == "Welcome to Conveyor, Ada <3"
    assert mail["Message-ID"] == delivery["provider_message_id"]
    assert delivery["id"] in mail["Message-ID"]
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Hello Ada <3," in text
    assert "Hello Ada &lt;3," in html  # autoescaped
    link = mail["List-Unsubscribe"].strip("<>")
    assert f"List-Unsubscribe: <{link}>".encode() in mailbox.raw[0]  # a URL, not encoded words
    assert link in text
    target = urlsplit(link)
    path = f"{target.path}?{target.query}"

    page = await stack.client.get(path)  # no login
    assert page.status == 200 and page.content_type == "text/html"
    assert "welcome" in await page.text()
    mine = await stack.client.get("/v1/me/subscriptions", headers=stack.headers())
    assert (await mine.json())["items"] == []  # a GET changes nothing

    clicked = await stack.client.post(path, data="List-Unsubscribe=One-Click")
    assert clicked.status == 200, await clicked.text()
    assert await clicked.json() == {"unsubscribed": True, "topic": "welcome", "channel": "email"}
    mine = await stack.client.get("/v1/me/subscriptions", headers=stack.headers())
    assert (await mine.json())["items"] == [
        {"topic": "welcome", "channel": "email", "opted_in": False}
    ]

    again = await _notify(
        stack, {"kind": "welcome", "recipients": [{"user_id": member_id}], "context": WELCOME}
    )
    (suppressed,) = again["deliveries"]
    assert suppressed["status"] == "suppressed" and suppressed["job_id"] is None
    assert "opted out" in suppressed["last_error"]

    critical = _send_reset(stack, "member@example.com", "reset-1")
    done = await _settled(stack, str(critical.notification.id))
    assert done["deliveries"][0]["status"] == "sent"
    assert mailbox.count() == 2
    assert mailbox.messages[1]["List-Unsubscribe"] is None  # critical: no opting out


async def test_a_delivery_already_sent_is_not_sent_again(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    created = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [{"address": "someone@example.com", "channel": "email"}],
            "context": WELCOME,
        },
    )
    done = await _settled(stack, created["id"])
    (delivery,) = done["deliveries"]
    assert delivery["status"] == "sent" and mailbox.count() == 1
    # The same delivery's job message again (a redelivery after a crash between the send and
    # the acknowledgement looks the same to the job): nothing is sent.
    owner = stack.row(delivery["job_id"]).owner_id
    twin = stack.container.submissions.submit_now(
        "notifications.deliver", {"delivery_id": delivery["id"]}, owner_id=owner
    )
    job = await _job_finished(stack, str(twin.job.id))
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == {"delivery_id": delivery["id"], "status": "sent", "sent": False}
    assert mailbox.count() == 1
    after = await _settled(stack, created["id"])
    assert after["deliveries"][0]["attempts"] == 1
    registry = stack.container.metrics.registry
    counted = {
        outcome: registry.get_sample_value(
            "conveyor_notification_deliveries_total",
            {"channel": "email", "provider": provider, "outcome": outcome},
        )
        for outcome, provider in (("sent", "smtp"), ("skipped", "none"))
    }
    assert counted == {"sent": 1.0, "skipped": 1.0}
    assert (
        registry.get_sample_value(
            "conveyor_notification_send_duration_seconds_count",
            {"channel": "email", "provider": "smtp"},
        )
        == 1.0
    )


async def test_a_missing_template_variable_fails_the_delivery_without_retries(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    created = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [{"address": "someone@example.com", "channel": "email"}],
            "context": {"name": "Ada"},
        },
    )
    done = await _settled(stack, created["id"])
    (delivery,) = done["deliveries"]
    assert delivery["status"] == "failed"
    assert "'product' is undefined" in delivery["last_error"]
    assert delivery["attempts"] == 1
    job = await _job_finished(stack, delivery["job_id"])
    assert job.status == JobStatus.FAILED and job.attempts == 1
    assert mailbox.count() == 0

    failed = await stack.client.get(
        "/v1/deliveries", params={"status": "failed"}, headers=stack.headers(stack.admin_token)
    )
    assert [d["id"] for d in (await failed.json())["items"]] == [delivery["id"]]


async def test_a_refused_recipient_fails_at_once_and_a_451_is_retried(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    mailbox.temporary_failures = 1
    created = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [
                {"address": "bounce@example.com", "channel": "email"},
                {"address": "later@example.com", "channel": "email"},
            ],
            "context": WELCOME,
        },
    )
    done = await _settled(stack, created["id"], within=30)
    by_address = {d["address"]: d for d in done["deliveries"]}
    bounced, later = by_address["bounce@example.com"], by_address["later@example.com"]
    assert bounced["status"] == "failed" and bounced["attempts"] == 1
    assert "550" in bounced["last_error"]
    assert later["status"] == "sent" and later["attempts"] == 2, later
    assert mailbox.count() == 1
    registry = stack.container.metrics.registry
    for outcome in ("sent", "retrying", "failed"):
        labels = {"channel": "email", "provider": "smtp", "outcome": outcome}
        assert registry.get_sample_value("conveyor_notification_deliveries_total", labels) == 1


async def test_the_api_refuses_bad_input_naming_the_field(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, _ = mail_stack
    member_id = _user_id(stack, "member@example.com")
    other_id = _user_id(stack, "other@example.com")
    me = [{"user_id": member_id}]
    cases: list[tuple[dict[str, Any], str | None, int, str]] = [
        ({"kind": "nope", "recipients": me}, None, 422, "kind"),
        ({"kind": "welcome", "recipients": []}, None, 422, "recipients"),
        ({"kind": "welcome", "recipients": me, "channels": ["fax"]}, None, 422, "channels.0"),
        ({"kind": "welcome", "recipients": me, "channels": []}, None, 422, "channels"),
        (
            {"kind": "jobs_digest", "recipients": me, "channels": ["push"]},
            None,
            422,
            "channels.0",
        ),
        ({"kind": "password_reset", "recipients": me}, None, 422, "kind"),
        (
            {"kind": "welcome", "recipients": me, "context": {"recipient": 1}},
            None,
            422,
            "context.recipient",
        ),
        (
            {"kind": "welcome", "recipients": [{"address": "x", "channel": "email"}]},
            None,
            422,
            "recipients.0.address",
        ),
        *(
            (
                {"kind": "welcome", "recipients": [{"address": address, "channel": channel}]},
                None,
                422,
                "recipients.0.address",
            )
            for channel, address in [
                ("email", "@b.c"),
                ("email", "<a@b.c>"),
                ("email", "a@b..c"),
                ("webhook", "http://example.com/a\x00b"),
                ("webhook", "http://example.com/\x1b[0m"),
                ("webhook", "http://10.0.0.5/hook"),
                ("webhook", "http://169.254.169.254/latest/meta-data"),
            ]
        ),
        (
            {"kind": "welcome", "recipients": [{"address": "12", "channel": "sms"}]},
            None,
            422,
            "recipients.0.address",
        ),
        (
            {"kind": "welcome", "recipients": [{"address": "ftp://x", "channel": "webhook"}]},
            None,
            422,
            "recipients.0.address",
        ),
        (
            {"kind": "welcome", "recipients": [{"address": "a@example.com"}]},
            None,
            422,
            "recipients.0.channel",
        ),
        ({"kind": "welcome", "recipients": [{}]}, None, 422, "recipients.0"),
        (
            {"kind": "welcome", "recipients": [{"user_id": str(uuid.uuid4())}]},
            None,
            422,
            "recipients.0.user_id",
        ),
        ({"kind": "welcome", "recipients": me, "extra": 1}, None, 422, "extra"),
        (
            {"kind": "welcome", "recipients": [{"user_id": other_id}]},
            stack.member_token,
            403,
            "recipients.0.user_id",
        ),
        (
            {"kind": "welcome", "recipients": [{"address": "a@example.com", "channel": "email"}]},
            stack.member_token,
            403,
            "recipients.0",
        ),
    ]
    for body, token, status, field in cases:
        response = await stack.client.post(
            "/v1/notifications", json=body, headers=stack.headers(token or stack.admin_token)
        )
        problem = await response.json()
        assert response.status == status, (body, problem)
        assert response.content_type == "application/problem+json"
        assert field in [e["field"] for e in problem["errors"]], (body, problem)
    malformed = await stack.client.post(
        "/v1/notifications", data=b"{", headers=stack.headers(stack.admin_token)
    )
    assert malformed.status == 400

    listing = await stack.client.get(
        "/v1/deliveries", params={"status": "lost"}, headers=stack.headers()
    )
    assert listing.status == 422 and (await listing.json())["errors"][0]["field"] == "status"
    listing = await stack.client.get(
        "/v1/deliveries", params={"notification_id": "x"}, headers=stack.headers()
    )
    assert (await listing.json())["errors"][0]["field"] == "notification_id"
    bad = await stack.client.put(
        "/v1/me/subscriptions",
        json={"items": [{"topic": "nope", "channel": "email", "opted_in": False}]},
        headers=stack.headers(),
    )
    assert bad.status == 422 and (await bad.json())["errors"][0]["field"] == "items.0.topic"
    forged = await stack.client.post("/v1/unsubscribe", params={"token": "abc.def"})
    assert forged.status == 400 and (await forged.json())["errors"][0]["field"] == "token"
    missing = await stack.client.post("/v1/unsubscribe")
    assert missing.status == 422


async def test_an_idempotency_key_returns_the_same_notification(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    body = {
        "kind": "welcome",
        "recipients": [{"address": "once@example.com", "channel": "email"}],
        "context": WELCOME,
    }
    first = await _notify(stack, body, **{"Idempotency-Key": "k-1"})
    response = await stack.client.post(
        "/v1/notifications",
        json=body,
        headers=stack.headers(stack.admin_token, **{"Idempotency-Key": "k-1"}),
    )
    assert response.status == 202 and response.headers["Idempotent-Replayed"] == "true"
    assert (await response.json())["id"] == first["id"]
    other = await _notify(
        stack,
        {**body, "context": {**WELCOME, "name": "Bob"}},
        expect=422,
        **{"Idempotency-Key": "k-1"},
    )
    assert other["errors"][0]["field"] == "Idempotency-Key"
    await _settled(stack, first["id"])
    assert mailbox.count() == 1


async def test_members_see_their_own_notifications_and_preferences_choose_channels(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    member_id = _user_id(stack, "member@example.com")
    put = await stack.client.put(
        "/v1/me/subscriptions",
        json={"items": [{"topic": "*", "channel": "email", "opted_in": False}]},
        headers=stack.headers(),
    )
    assert put.status == 200, await put.json()
    created = await _notify(
        stack,
        {"kind": "job_finished", "recipients": [{"user_id": member_id}], "context": {}},
        token=stack.member_token,
    )
    assert [d["status"] for d in created["deliveries"]] == ["suppressed"]
    hidden = await stack.client.get(
        f"/v1/notifications/{created['id']}", headers=stack.headers(stack.other_token)
    )
    assert hidden.status == 404
    others = await stack.client.get("/v1/deliveries", headers=stack.headers(stack.other_token))
    assert (await others.json())["items"] == []
    mine = await stack.client.get(
        "/v1/deliveries",
        params={"notification_id": created["id"], "channel": "email"},
        headers=stack.headers(),
    )
    assert [d["status"] for d in (await mine.json())["items"]] == ["suppressed"]
    assert mailbox.count() == 0


async def test_a_preview_renders_a_kind_with_its_sample_or_a_context(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, _ = mail_stack
    response = await stack.client.post(
        "/v1/notifications/preview", json={"kind": "welcome"}, headers=stack.headers()
    )
    body = await response.json()
    assert response.status == 200, body
    assert body["rendered"]["email"]["subject"] == "Welcome to Conveyor, Ada"
    assert body["rendered"]["webhook"]["data"]["name"] == "Ada"
    assert set(body["rendered"]) == {"email", "sms", "push", "webhook"}
    response = await stack.client.post(
        "/v1/notifications/preview",
        json={"kind": "welcome", "channel": "sms", "context": {"name": "Bo"}},
        headers=stack.headers(),
    )
    problem = await response.json()
    assert response.status == 422 and problem["errors"][0]["field"] == "context"
    assert "product" in problem["errors"][0]["message"]


@pytest.mark.rate_limits({"smtp": "2/s"})
async def test_a_providers_rate_limit_spreads_a_burst(mail_stack: tuple[Stack, Mailbox]) -> None:
    stack, mailbox = mail_stack
    created = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [{"address": f"r{i}@example.com", "channel": "email"} for i in range(6)],
            "context": WELCOME,
        },
    )
    done = await _settled(stack, created["id"], within=40)
    assert [d["status"] for d in done["deliveries"]] == ["sent"] * 6
    assert mailbox.count() == 6
    # Two per one-second window: six span three windows, so more than a second apart.
    times = sorted(mailbox.times)
    assert times[-1] - times[0] > 0.9, times


@pytest.fixture
def quick_digest(tmp_path: Path) -> Path:
    """A folder with a digest kind of one second."""
    folder = tmp_path / "kinds" / "quick_digest"
    folder.mkdir(parents=True)
    (folder / "kind.json").write_text('{"channels": ["email"], "digest_seconds": 1}')
    (folder / "email_subject.txt").write_text("{{ items|length }} things happened")
    (folder / "email.txt").write_text("{% for i in items %}{{ i.what }}\n{% endfor %}")
    return folder.parent


@pytest.mark.kinds_dir("quick_digest")
async def test_a_full_digest_is_not_joined_the_next_notification_opens_another(
    mail_stack: tuple[Stack, Mailbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, mailbox = mail_stack
    monkeypatch.setattr(notifications, "MAX_DIGEST_ITEMS", 2)
    templates = stack.container.resource(TEMPLATES)
    with stack.db() as session:
        admin = session.scalars(select(User).where(User.email == "admin@example.com")).one()

    def notify(what: str) -> notifications.Created:
        return notifications.create(
            stack.db,
            stack.container.submissions,
            templates,
            admin,
            notifications.NewNotification(
                kind="quick_digest",
                recipients=[notifications.Recipient(address="full@example.com", channel="email")],
                context={"what": what},
            ),
            notifications.Limits(100, 65536),
        )

    first, second, third = [await asyncio.to_thread(notify, w) for w in ("a", "b", "c")]
    assert second.deliveries[0].digest_id == first.deliveries[0].id
    assert third.deliveries[0].digest_id is None and third.deliveries[0].job_id is not None
    for created in (first, second, third):
        done = await _settled(stack, str(created.notification.id))
        assert done["deliveries"][0]["status"] == "sent", done
    subjects = sorted(m["Subject"] for m in mailbox.messages)
    assert subjects == ["1 things happened", "2 things happened"]


@pytest.mark.kinds_dir("quick_digest")
async def test_a_digest_kind_batches_a_recipients_notifications_into_one_message(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    templates = stack.container.resource(TEMPLATES)  # the kinds the pool renders with
    with stack.db() as session:
        admin = session.scalars(select(User).where(User.email == "admin@example.com")).one()
    limits = notifications.Limits(100, 65536)

    def notify(what: str, address: str = "digest@example.com") -> notifications.Created:
        return notifications.create(
            stack.db,
            stack.container.submissions,
            templates,
            admin,
            notifications.NewNotification(
                kind="quick_digest",
                recipients=[notifications.Recipient(address=address, channel="email")],
                context={"what": what},
            ),
            limits,
        )

    first, second, third = [await asyncio.to_thread(notify, w) for w in ("a", "b", "c")]
    other = await asyncio.to_thread(notify, "d", "someone-else@example.com")
    lead = first.deliveries[0]
    assert lead.job_id is not None
    assert [c.deliveries[0].digest_id for c in (second, third)] == [lead.id, lead.id]
    assert second.deliveries[0].job_id is None and other.deliveries[0].digest_id is None
    assert stack.row(str(lead.job_id)).status == JobStatus.SCHEDULED  # waits for its window

    for created in (first, second, third, other):
        done = await _settled(stack, str(created.notification.id))
        assert done["deliveries"][0]["status"] == "sent", done
    assert mailbox.count() == 2
    by_address = {m["To"]: m for m in mailbox.messages}
    digest = by_address["digest@example.com"]
    assert digest["Subject"] == "3 things happened"
    assert digest.get_body(("plain",)).get_content().split() == ["a", "b", "c"]  # type: ignore[union-attr]
    assert by_address["someone-else@example.com"]["Subject"] == "1 things happened"


async def test_one_notification_goes_out_by_email_webhook_and_sms(
    mail_stack: tuple[Stack, Mailbox], provider: FakeProvider
) -> None:
    stack, mailbox = mail_stack
    created = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [
                {"address": "ada@example.com", "channel": "email"},
                {"address": provider.url("/hook"), "channel": "webhook"},
                {"address": "+14155550100", "channel": "sms"},
            ],
            "context": WELCOME,
        },
    )
    done = await _settled(stack, created["id"])
    by_channel = {d["channel"]: d for d in done["deliveries"]}
    assert {c: d["status"] for c, d in by_channel.items()} == {
        "email": "sent",
        "webhook": "sent",
        "sms": "sent",
    }, done
    assert by_channel["sms"]["provider"] == "fake-sms"
    assert mailbox.count() == 1
    received = {r.path: r for r in provider.wait_for(2)}
    hook = received["/hook"]
    response = await stack.client.get(
        "/v1/me/webhook-key", headers=stack.headers(stack.admin_token)
    )
    mine = await response.json()
    assert response.status == 200, mine
    assert mine["previous_key"] is None
    signature, delivery = hook.headers["Conveyor-Signature"], hook.headers["Conveyor-Delivery"]
    assert f"o={mine['owner_id']}," in signature
    assert verify_signature(mine["key"], signature, delivery, hook.body)
    assert not verify_signature(WEBHOOK_SECRET, signature, delivery, hook.body)
    response = await stack.client.get(
        "/v1/me/webhook-key", headers=stack.headers(stack.member_token)
    )
    theirs = await response.json()
    assert theirs["owner_id"] != mine["owner_id"]
    assert not verify_signature(theirs["key"], signature, delivery, hook.body)
    assert hook.headers["Conveyor-Delivery"] == by_channel["webhook"]["id"]
    assert hook.json() == {
        "kind": "welcome",
        "notification_id": created["id"],
        "name": "Ada <3",
        "product": "Conveyor",
    }
    assert received["/sms"].json() == {
        "to": "+14155550100",
        "text": "Welcome to Conveyor, Ada <3!",
    }
    assert received["/sms"].headers["Idempotency-Key"] == by_channel["sms"]["id"]


# --- gaps: deliveries ended outside the function, send-time checks, bounces, crashes ----------


def _delivery_row(stack: Stack, delivery_id: str) -> Any:
    with stack.db() as session:
        return session.get(Delivery, uuid.UUID(delivery_id))


async def test_a_delivery_whose_job_is_cancelled_while_queued_fails_and_a_retry_sends_it(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    stack.stop_worker()  # keep its job queued
    created = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [{"address": "ada@example.com", "channel": "email"}],
            "context": WELCOME,
        },
    )
    (queued,) = created["deliveries"]
    cancel = await stack.client.post(
        f"/v1/jobs/{queued['job_id']}/cancel", headers=stack.headers(stack.admin_token)
    )
    assert cancel.status in (200, 202), await cancel.json()
    done = await _settled(stack, created["id"])
    (delivery,) = done["deliveries"]
    assert delivery["status"] == "failed", delivery
    assert delivery["last_error"] == "its job was cancelled before it was sent"
    assert mailbox.count() == 0

    stack.start_worker()
    retry = await stack.client.post(
        f"/v1/jobs/{queued['job_id']}/retry", headers=stack.headers(stack.admin_token)
    )
    assert retry.status == 202, await retry.json()
    again = await _settled(stack, created["id"])
    (delivery,) = again["deliveries"]
    assert delivery["status"] == "sent" and delivery["last_error"] is None, delivery
    assert mailbox.count() == 1


async def test_a_delivery_whose_workers_were_lost_for_good_fails_saying_so(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    """A worker claimed the delivery (`sending`) and died, as many times as allowed: the
    lease reconciler fails the job, and the delivery ends `failed` with it."""
    stack, mailbox = mail_stack
    stack.stop_worker()
    created = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [{"address": "ada@example.com", "channel": "email"}],
            "context": WELCOME,
        },
    )
    (queued,) = created["deliveries"]
    job_id = uuid.UUID(queued["job_id"])
    notifications.claim(stack.db, uuid.UUID(queued["id"]), 1)  # the worker that died
    with stack.db.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.RUNNING.value,
                attempts=1,
                worker_losses=stack.settings.max_worker_losses,
                lease_expires_at=utcnow() - dt.timedelta(seconds=1),
            )
        )
    job = await stack.wait_for(str(job_id), "failed", token=stack.admin_token)
    assert job["status"] == "failed"
    done = await _settled(stack, created["id"])
    (delivery,) = done["deliveries"]
    assert delivery["status"] == "failed", delivery
    assert "workers were lost" in delivery["last_error"]
    assert mailbox.count() == 0


async def test_an_opt_out_between_create_and_send_suppresses_all_but_a_critical_kind(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    member_id = _user_id(stack, "member@example.com")
    stack.stop_worker()  # created now, sent later
    welcome = await _notify(
        stack, {"kind": "welcome", "recipients": [{"user_id": member_id}], "context": WELCOME}
    )
    reset = _send_reset(stack, "member@example.com", "reset-1")
    assert [d["status"] for d in welcome["deliveries"]] == ["pending"]
    put = await stack.client.put(
        "/v1/me/subscriptions",
        json={"items": [{"topic": "*", "channel": "email", "opted_in": False}]},
        headers=stack.headers(),
    )
    assert put.status == 200, await put.json()
    stack.start_worker()
    (suppressed,) = (await _settled(stack, welcome["id"]))["deliveries"]
    assert suppressed["status"] == "suppressed", suppressed
    assert suppressed["last_error"] == "the recipient opted out before it was sent"
    (sent,) = (await _settled(stack, str(reset.notification.id)))["deliveries"]
    assert sent["status"] == "sent", sent
    assert mailbox.count() == 1
    job = await _job_finished(stack, suppressed["job_id"])
    assert job.status == JobStatus.SUCCEEDED and job.result is not None
    assert job.result["status"] == "suppressed"


async def test_a_users_email_address_as_a_recipient_is_that_user_with_their_choices(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    member_id = _user_id(stack, "member@example.com")
    put = await stack.client.put(
        "/v1/me/subscriptions",
        json={"items": [{"topic": "welcome", "channel": "email", "opted_in": False}]},
        headers=stack.headers(),
    )
    assert put.status == 200, await put.json()
    created = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [
                {"address": "Member@Example.com", "channel": "email"},
                {"user_id": member_id},
            ],
            "context": WELCOME,
        },
    )
    (delivery,) = created["deliveries"]  # the address and the user are one person
    assert delivery["status"] == "suppressed", delivery
    assert delivery["last_error"] == "the recipient opted out"
    assert (delivery["user_id"], delivery["address"]) == (member_id, "member@example.com")
    other = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [{"address": "OTHER@example.com", "channel": "email"}],
            "context": WELCOME,
        },
    )
    (sent,) = (await _settled(stack, other["id"]))["deliveries"]
    assert sent["status"] == "sent" and sent["user_id"] == _user_id(stack, "other@example.com")
    (message,) = mailbox.messages
    assert "List-Unsubscribe" in message


async def test_a_hard_bounce_lists_the_address_and_suppresses_it_until_cleared(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    to_bounce = {
        "kind": "welcome",
        "recipients": [{"address": "bounce@example.com", "channel": "email"}],
        "context": WELCOME,
    }
    first = await _notify(stack, to_bounce)
    (bounced,) = (await _settled(stack, first["id"]))["deliveries"]
    assert bounced["status"] == "failed" and "550" in bounced["last_error"]

    admin = stack.headers(stack.admin_token)
    listed = await stack.client.get("/v1/bounces", headers=admin)
    page = await listed.json()
    assert listed.status == 200, page
    (entry,) = page["items"]
    assert entry["channel"] == "email" and entry["address"] == "bounce@example.com"
    assert entry["delivery_id"] == bounced["id"] and "550" in entry["reason"]
    filtered = await stack.client.get(
        "/v1/bounces", params={"channel": "sms", "address": "bounce@example.com"}, headers=admin
    )
    assert (await filtered.json())["items"] == []
    member = await stack.client.get("/v1/bounces", headers=stack.headers())
    assert member.status == 403
    bad = await stack.client.get("/v1/bounces", params={"channel": "fax"}, headers=admin)
    assert bad.status == 422 and (await bad.json())["errors"][0]["field"] == "channel"
    forbidden = await stack.client.delete(f"/v1/bounces/{entry['id']}", headers=stack.headers())
    assert forbidden.status == 403

    second = await _notify(stack, to_bounce)  # not sent: recorded as suppressed
    (suppressed,) = second["deliveries"]
    assert suppressed["status"] == "suppressed" and suppressed["job_id"] is None
    assert "bounced earlier" in suppressed["last_error"]

    cleared = await stack.client.delete(f"/v1/bounces/{entry['id']}", headers=admin)
    assert cleared.status == 204
    again = await stack.client.delete(f"/v1/bounces/{entry['id']}", headers=admin)
    assert again.status == 404
    assert (await (await stack.client.get("/v1/bounces", headers=admin)).json())["items"] == []
    third = await _notify(stack, to_bounce)
    assert [d["status"] for d in third["deliveries"]] == ["pending"]
    await _settled(stack, third["id"])
    assert mailbox.count() == 0


async def test_a_redelivery_after_a_crash_between_recording_and_acknowledging_sends_nothing(
    mail_stack: tuple[Stack, Mailbox], provider: FakeProvider
) -> None:
    """The worker recorded `sent` and died before it acknowledged (its job still `running`):
    the lease reconciler runs the job again, and its second attempt sends nothing. Nor does
    another message for the same delivery."""
    stack, _mailbox = mail_stack
    sms = {
        "kind": "welcome",
        "recipients": [{"address": "+14155550100", "channel": "sms"}],
        "context": WELCOME,
    }
    created = await _notify(stack, sms)
    (delivery,) = (await _settled(stack, created["id"]))["deliveries"]
    assert delivery["status"] == "sent" and provider.count() == 1
    job_id = uuid.UUID(delivery["job_id"])
    await _job_finished(stack, str(job_id))
    with stack.db.begin() as session:  # as the crash left it
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.RUNNING.value,
                finished_at=None,
                result=None,
                lease_expires_at=utcnow() - dt.timedelta(seconds=1),
            )
        )
    job = await stack.wait_for(str(job_id), "succeeded", token=stack.admin_token)
    assert job["attempts"] == 2, job
    assert job["result"] == {"delivery_id": delivery["id"], "status": "sent", "sent": False}
    owner = stack.row(str(job_id)).owner_id
    twin = stack.container.submissions.submit_now(
        "notifications.deliver", {"delivery_id": delivery["id"]}, owner_id=owner
    )
    await _job_finished(stack, str(twin.job.id))
    assert provider.count() == 1
    assert _delivery_row(stack, delivery["id"]).attempts == 1


@pytest.mark.stack_overrides({"http_timeout_seconds": 1.0})
async def test_a_crash_between_the_providers_accept_and_recording_sends_the_same_key_again(
    mail_stack: tuple[Stack, Mailbox], provider: FakeProvider
) -> None:
    """The provider took the message but its answer never came back (a hang past the
    timeout, as a crash right after the send looks): the delivery is retried, with the same
    Idempotency-Key, so a provider that honours it sends one message."""
    stack, _mailbox = mail_stack
    provider.plan(Answer(hang=True))
    created = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [{"address": "+14155550100", "channel": "sms"}],
            "context": WELCOME,
        },
    )
    (delivery,) = (await _settled(stack, created["id"], within=30))["deliveries"]
    assert delivery["status"] == "sent" and delivery["attempts"] == 2, delivery
    first, second = provider.wait_for(2)
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == delivery["id"]
    assert first.body == second.body


async def test_the_python_client_notifies_and_reads_the_deliveries_back(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    base = str(stack.client.make_url("/")).rstrip("/")
    recipients = [
        {"address": "ada@example.com", "channel": "email"},
        {"address": "bob@example.com", "channel": "email"},
    ]
    async with AsyncClient(base, stack.admin_token) as client:
        created = await client.notify(
            "welcome", recipients, context=WELCOME, idempotency_key="client-1"
        )
        assert [d.status for d in created.deliveries] == ["pending", "pending"]
        again = await client.notify(
            "welcome", recipients, context=WELCOME, idempotency_key="client-1"
        )
        assert again.id == created.id
        done = await _settled(stack, created.id)
        assert {d["status"] for d in done["deliveries"]} == {"sent"}
        read = await client.get_notification(created)
        assert read.finished and read.kind == "welcome"
        listed = [d.id async for d in client.deliveries(notification=created, limit=1)]
        assert sorted(listed) == sorted(d.id for d in read.deliveries)
        with pytest.raises(ClientInvalidRequestError) as bad:
            await client.notify("no-such-kind", recipients)
        assert "kind" in bad.value.fields

    def blocking() -> tuple[ClientNotification, list[str]]:
        with Client(base, stack.admin_token) as sync:
            got = sync.get_notification(created.id)
            sent = [d.address for d in sync.deliveries(notification=created.id, status="sent")]
            return got, sent

    got, sent = await asyncio.to_thread(blocking)
    assert got.id == created.id and sorted(sent) == ["ada@example.com", "bob@example.com"]
    assert mailbox.count() == 2


# --- what a provider's answers do to a delivery, through the deliver job ---------------------


async def _webhook(stack: Stack, provider: FakeProvider, path: str) -> dict[str, Any]:
    created = await _notify(
        stack,
        {
            "kind": "welcome",
            "recipients": [{"address": provider.url(path), "channel": "webhook"}],
            "context": WELCOME,
        },
    )
    return created


def _retry_messages(stack: Stack, job_id: str) -> list[str]:
    with stack.db() as session:
        return [
            e.message or ""
            for e in session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == uuid.UUID(job_id), JobEvent.status == "retrying")
                .order_by(JobEvent.id)
            )
        ]


async def test_a_500_is_retried_and_the_retry_sends_it(
    mail_stack: tuple[Stack, Mailbox], provider: FakeProvider
) -> None:
    stack, _ = mail_stack
    provider.plan(500, 200)
    created = await _webhook(stack, provider, "/flaky")
    (delivery,) = (await _settled(stack, created["id"], within=30))["deliveries"]
    assert (delivery["status"], delivery["attempts"]) == ("sent", 2), delivery
    first, second = provider.wait_for(2)
    assert first.headers["Conveyor-Delivery"] == second.headers["Conveyor-Delivery"]
    assert any("answered 500" in m for m in _retry_messages(stack, delivery["job_id"]))


async def test_a_429_with_retry_after_waits_as_asked(
    mail_stack: tuple[Stack, Mailbox], provider: FakeProvider
) -> None:
    stack, _ = mail_stack
    provider.plan(Answer(429, retry_after="2"), 200)
    created = await _webhook(stack, provider, "/busy")
    (delivery,) = (await _settled(stack, created["id"], within=30))["deliveries"]
    assert (delivery["status"], delivery["attempts"]) == ("sent", 2), delivery
    [message] = _retry_messages(stack, delivery["job_id"])
    assert "trying again in 2s, as it asked" in message
    with stack.db() as session:
        events = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == uuid.UUID(delivery["job_id"]))
            .where(JobEvent.status.in_(["retrying", "running"]))
            .order_by(JobEvent.id)
        ).all()
    retried = next(e.at for e in events if e.status == "retrying")
    again = next(e.at for e in events if e.status == "running" and e.attempt == 2)
    assert again - retried >= dt.timedelta(seconds=1.5)  # not the backoff's 0-5 s at random


async def test_a_400_fails_at_once_without_a_retry(
    mail_stack: tuple[Stack, Mailbox], provider: FakeProvider
) -> None:
    stack, _ = mail_stack
    provider.plan(400)
    created = await _webhook(stack, provider, "/refuses")
    (delivery,) = (await _settled(stack, created["id"]))["deliveries"]
    assert (delivery["status"], delivery["attempts"]) == ("failed", 1), delivery
    assert "answered 400" in delivery["last_error"]
    job = await _job_finished(stack, delivery["job_id"])
    assert job.status == JobStatus.FAILED and job.attempts == 1
    assert len(provider.wait_for(1)) == 1 and _retry_messages(stack, delivery["job_id"]) == []


async def test_a_delivery_whose_retries_are_used_up_is_failed(
    mail_stack: tuple[Stack, Mailbox], provider: FakeProvider
) -> None:
    stack, _ = mail_stack
    provider.always(503)
    stack.stop_worker()
    created = await _webhook(stack, provider, "/down")
    (queued,) = created["deliveries"]
    with stack.db() as session:  # one retry, not ten: the same arithmetic, sooner
        session.execute(
            update(Job).where(Job.id == uuid.UUID(queued["job_id"])).values(max_retries=1)
        )
        session.commit()
    stack.start_worker()
    (delivery,) = (await _settled(stack, created["id"], within=30))["deliveries"]
    assert (delivery["status"], delivery["attempts"]) == ("failed", 2), delivery
    assert "answered 503" in delivery["last_error"]
    job = await _job_finished(stack, delivery["job_id"])
    assert job.status == JobStatus.FAILED and job.attempts == 2


async def test_the_api_refuses_to_send_or_preview_a_system_kind(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    member_id = _user_id(stack, "member@example.com")
    for kind in ("password_reset", "verify_email", "new_sign_in"):
        problem = await _notify(
            stack,
            {"kind": kind, "recipients": [{"user_id": member_id}], "context": {}},
            expect=422,
        )
        assert problem["errors"] == [{"field": "kind", "message": "sent by Conveyor only"}]
        response = await stack.client.post(
            "/v1/notifications/preview", json={"kind": kind}, headers=stack.headers()
        )
        problem = await response.json()
        assert response.status == 422, problem
        assert problem["errors"] == [{"field": "kind", "message": "sent by Conveyor only"}]
    unknown = await _notify(
        stack, {"kind": "nope", "recipients": [{"user_id": member_id}]}, expect=422
    )
    known = unknown["errors"][0]["message"]
    assert "welcome" in known and "password_reset" not in known
    assert mailbox.count() == 0


async def test_a_sensitive_context_is_never_shown_and_is_erased_once_sent(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    stack.stop_worker()  # created now, sent later: its context is still held meanwhile
    created = _send_reset(stack, "member@example.com", "reset-1")
    assert (
        created.created and created.notification.owner_id == _user(stack, "member@example.com").id
    )
    notification_id = str(created.notification.id)
    for token in (stack.member_token, stack.admin_token):
        response = await stack.client.get(
            f"/v1/notifications/{notification_id}", headers=stack.headers(token)
        )
        body = await response.json()
        assert response.status == 200, body
        assert body["context"] == {"redacted": True}
        assert RESET_URL not in await response.text()
    with stack.db() as session:
        row = session.get(Notification, created.notification.id)
        assert row is not None and row.context["reset_url"] == RESET_URL
        assert row.context_erased_at is None

    stack.start_worker()
    (delivery,) = (await _settled(stack, notification_id))["deliveries"]
    assert delivery["status"] == "sent", delivery
    assert mailbox.count() == 1
    text = mailbox.messages[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert RESET_URL in text and "s3cret" not in mailbox.messages[0]["Subject"]
    with stack.db() as session:
        row = session.get(Notification, created.notification.id)
        assert row is not None and row.context == {} and row.context_erased_at is not None

    # A redelivered message of the sent delivery sends nothing (and renders nothing).
    twin = stack.container.submissions.submit_now(
        "notifications.deliver", {"delivery_id": delivery["id"]}, owner_id=row.owner_id
    )
    job = await _job_finished(stack, str(twin.job.id))
    assert job.result == {"delivery_id": delivery["id"], "status": "sent", "sent": False}
    assert mailbox.count() == 1


async def test_a_system_email_is_sent_once_per_idempotency_key(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    first = _send_reset(stack, "member@example.com", "reset-1")
    again = _send_reset(stack, "member@example.com", "reset-1")  # a retried auth job
    assert not again.created and again.notification.id == first.notification.id
    assert [d.id for d in again.deliveries] == [d.id for d in first.deliveries]
    (delivery,) = (await _settled(stack, str(first.notification.id)))["deliveries"]
    assert delivery["status"] == "sent"
    after = _send_reset(stack, "member@example.com", "reset-1")  # after the erasure too
    assert not after.created and after.notification.id == first.notification.id
    assert mailbox.count() == 1
    with pytest.raises(InvalidRequestError) as refused:
        notifications.send_system(
            stack.db,
            stack.container.submissions,
            Templates(max_bytes=65536),
            _user(stack, "member@example.com"),
            "welcome",
            WELCOME,
            idempotency_key="welcome-1",
        )
    assert refused.value.errors == [
        {"field": "kind", "message": "not a system kind: send it with create"}
    ]


async def test_a_sensitive_notification_suppressed_at_once_is_erased_at_once(
    mail_stack: tuple[Stack, Mailbox],
) -> None:
    stack, mailbox = mail_stack
    notifications.record_bounce(stack.db, None, "email", "member@example.com", "550 no mailbox")
    created = _send_reset(stack, "member@example.com", "reset-1")
    (delivery,) = created.deliveries
    assert delivery.status == "suppressed" and delivery.job_id is None
    assert created.notification.context == {}
    assert created.notification.context_erased_at is not None
    assert mailbox.count() == 0
