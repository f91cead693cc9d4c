"""The notifications pool's parts that need no service: templates, unsubscribe tokens, the
email message and its outbox, the backoff's full jitter, the embedded mode's choices."""

from __future__ import annotations

import datetime as dt
import random
import smtplib
import time
import uuid
from email import message_from_bytes, policy
from pathlib import Path
from unittest.mock import ANY

import pytest
from dramatiq.rate_limits import WindowRateLimiter
from dramatiq.rate_limits.backends import StubBackend

from conveyor.dev import embedded_settings
from conveyor.egress import EgressPolicy
from conveyor.errors import (
    BadRequestError,
    BouncedAddressError,
    InvalidRequestError,
    PermanentDeliveryError,
    RetryLater,
)
from conveyor.notifications.channels import Outgoing, Sent
from conveyor.notifications.email import (
    OutboxChannel,
    SmtpChannel,
    build_message,
    check_address,
)
from conveyor.notifications.ratelimit import MAX_WAIT, Limit, RateLimitedChannel, parse_limit
from conveyor.notifications.templates import RenderError, Templates
from conveyor.notifications.unsubscribe import OptOut, UnsubscribeLinks
from conveyor.registry import RetryPolicy
from conveyor.services.notifications import check_address_for, preview
from tests import stack
from tests.mail import smtp_server

RECIPIENT = {"address": "ada@example.com", "user_id": None, "channel": "email"}
NOTIFICATION = {"id": "n-1", "kind": "welcome"}


def _kind(root: Path, name: str, files: dict[str, str], meta: str = "{}") -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "kind.json").write_text(meta)
    for filename, text in files.items():
        (folder / filename).write_text(text)


AUTH_KINDS = (
    "verify_email",
    "password_reset",
    "password_changed",
    "new_sign_in",
    "account_exists",
    "mfa_changed",
    "identity_linked",
)


def test_the_built_in_kinds_render_and_the_auth_emails_are_critical_and_system() -> None:
    templates = Templates(max_bytes=65536)
    kinds = {k.name: k for k in templates.kinds()}
    assert {"welcome", "job_finished", *AUTH_KINDS} <= set(kinds)
    assert not kinds["welcome"].critical and not kinds["welcome"].system
    for name in AUTH_KINDS:
        kind = kinds[name]
        assert kind.critical and kind.system and kind.channels == ("email",), name
        assert kind.sensitive == (name in ("verify_email", "password_reset")), name
    for kind in kinds.values():
        for channel in kind.channels:
            templates.render(
                kind.name,
                channel,
                kind.sample,
                recipient=RECIPIENT,
                notification=NOTIFICATION,
                unsubscribe_url="https://example.com/u",
            )


def test_no_subject_of_an_auth_email_holds_its_context() -> None:
    templates = Templates(max_bytes=65536)
    for name in AUTH_KINDS:
        kind = templates.kind(name)
        rendered = templates.render(
            name, "email", kind.sample, recipient=RECIPIENT, notification=NOTIFICATION
        )
        assert rendered.subject and rendered.text and rendered.html
        shown = [str(v) for v in kind.sample.values()]
        assert not [v for v in shown if v in rendered.subject], name
        assert all(v in rendered.text for v in shown if "://" in v), name


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ('{"sensitive": true, "digest_seconds": 60}', "a sensitive kind cannot be a digest"),
        ('{"system": "yes"}', "system must be true or false"),
        ('{"critical": 1}', "critical must be true or false"),
    ],
)
def test_a_kind_json_with_bad_flags_is_refused_when_loaded(
    tmp_path: Path, meta: str, error: str
) -> None:
    _kind(tmp_path, "mine", {"email_subject.txt": "Hi", "email.txt": "Hi"}, meta)
    with pytest.raises(ValueError, match=error):
        Templates(max_bytes=65536, extra_dir=tmp_path)


def test_html_is_autoescaped_text_is_not_and_a_subject_is_one_line() -> None:
    rendered = Templates(max_bytes=65536).render(
        "welcome",
        "email",
        {"name": "<b>Ada</b>\nBcc: x@example.com", "product": "P"},
        recipient=RECIPIENT,
        notification=NOTIFICATION,
    )
    assert rendered.html is not None and "&lt;b&gt;Ada&lt;/b&gt;" in rendered.html
    assert rendered.text is not None and "<b>Ada</b>" in rendered.text
    assert rendered.subject == "Welcome to P, <b>Ada</b> Bcc: x@example.com"


def test_a_missing_variable_is_an_error_naming_it() -> None:
    with pytest.raises(RenderError, match="'product' is undefined"):
        Templates(max_bytes=65536).render(
            "welcome", "email", {"name": "Ada"}, recipient=RECIPIENT, notification=NOTIFICATION
        )


def test_the_sandbox_refuses_unsafe_attributes(tmp_path: Path) -> None:
    _kind(tmp_path, "sneaky", {"sms.txt": "{{ ''.__class__.__mro__[1].__subclasses__() }}"})
    templates = Templates(max_bytes=65536, extra_dir=tmp_path)
    with pytest.raises(RenderError):
        templates.render("sneaky", "sms", {}, recipient=RECIPIENT, notification=NOTIFICATION)


def test_any_error_of_a_template_is_a_render_error_and_a_422_in_a_preview(
    tmp_path: Path,
) -> None:
    _kind(tmp_path, "odd", {"sms.txt": "{{ count + 'a' }}"})  # a TypeError, not a TemplateError
    templates = Templates(max_bytes=65536, extra_dir=tmp_path)
    with pytest.raises(RenderError, match="TypeError"):
        templates.render("odd", "sms", {"count": 1}, recipient=RECIPIENT, notification=NOTIFICATION)
    with pytest.raises(InvalidRequestError) as refused:
        preview(templates, "odd", "sms", {"count": 1})
    assert [e["field"] for e in refused.value.errors or []] == ["context"]


def test_templates_past_the_size_limit_are_refused(tmp_path: Path) -> None:
    _kind(
        tmp_path,
        "big",
        {"sms.txt": "x" * 2048, "push_title.txt": "t", "push_body.txt": "{{ 'y' * 5000 }}"},
    )
    templates = Templates(max_bytes=1024, extra_dir=tmp_path)
    with pytest.raises(RenderError, match="larger than 1024 bytes"):
        templates.render("big", "sms", {}, recipient=RECIPIENT, notification=NOTIFICATION)
    with pytest.raises(RenderError, match="renders larger"):
        templates.render("big", "push", {}, recipient=RECIPIENT, notification=NOTIFICATION)


def test_a_kind_of_ones_own_overrides_a_built_in_one(tmp_path: Path) -> None:
    _kind(tmp_path, "welcome", {"sms.txt": "hi {{ name }}"}, '{"channels": ["sms"]}')
    templates = Templates(max_bytes=65536, extra_dir=tmp_path)
    assert templates.kind("welcome").default_channels == ("sms",)
    rendered = templates.render(
        "welcome", "sms", {"name": "Bo"}, recipient=RECIPIENT, notification=NOTIFICATION
    )
    assert rendered.text == "hi Bo"  # an SMS: no trailing newline


def test_a_json_template_must_render_an_object(tmp_path: Path) -> None:
    _kind(tmp_path, "hook", {"webhook.json": "{{ value }}"}, '{"channels": ["webhook"]}')
    templates = Templates(max_bytes=65536, extra_dir=tmp_path)
    with pytest.raises(RenderError, match="tojson"):
        templates.render(
            "hook", "webhook", {"value": "{oops"}, recipient=RECIPIENT, notification=NOTIFICATION
        )


def test_unsubscribe_tokens_are_signed_and_bound_to_the_key() -> None:
    links = UnsubscribeLinks.of(stack.test_settings(public_url="https://jobs.example.com/"))
    opt_out = OptOut("user:1", "welcome", "email")
    url = links.url(opt_out)
    assert url.startswith("https://jobs.example.com/v1/unsubscribe?token=")
    token = links.issue(opt_out)
    assert links.read(token) == opt_out
    body, _, tag = token.partition(".")
    for forged in (f"{body}.{tag[:-2]}AA", f"{body[:-2]}AA.{tag}", "", "x", "a.b.c"):
        with pytest.raises(BadRequestError):
            links.read(forged)
    other = UnsubscribeLinks.of(stack.test_settings(secret_key="another-key-" * 4))
    with pytest.raises(BadRequestError):
        other.read(token)


def _outgoing(**fields: object) -> Outgoing:
    values: dict[str, object] = {
        "delivery_id": uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057"),
        "notification_id": uuid.uuid4(),
        "kind": "welcome",
        "channel": "email",
        "address": "ada@example.com",
        "subject": "Hi",
        "text": "plain\n",
        "html": "<p>html</p>\n",
        "headers": {"List-Unsubscribe": "<https://x/u>"},
    }
    return Outgoing(**{**values, **fields})  # type: ignore[arg-type]


def test_an_email_has_both_parts_its_headers_and_a_message_id_of_its_delivery() -> None:
    email = build_message(_outgoing(), "Conveyor <noreply@example.com>")
    assert email["Message-ID"] == "<01890a5d-ac96-774b-bcce-b302099a8057@example.com>"
    assert email["List-Unsubscribe"] == "<https://x/u>"
    assert email.get_content_type() == "multipart/alternative"
    assert email.get_body(("plain",)).get_content() == "plain\n"  # type: ignore[union-attr]
    assert email.get_body(("html",)).get_content() == "<p>html</p>\n"  # type: ignore[union-attr]
    with pytest.raises(PermanentDeliveryError):
        build_message(_outgoing(text=None, html=None), "noreply@example.com")


@pytest.mark.parametrize(
    "address",
    ["ada", "ada@localhost", "Ada <ada@example.com>", "a@b.c\n", "@b.c", "<a@b.c>", "a@b..c"],
)
def test_only_plain_email_addresses_are_accepted(address: str) -> None:
    with pytest.raises(ValueError):
        check_address(address)
    with pytest.raises(InvalidRequestError) as refused:
        check_address_for("email", address, "recipients.0.address")
    assert refused.value.errors == [{"field": "recipients.0.address", "message": ANY}]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a\x00b",
        "http://example.com/\x7f",
        "https://exämple.com/",
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.5/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest",
    ],
)
def test_a_webhook_url_must_be_printable_and_reachable(url: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        check_address_for("webhook", url, "recipients.0.address")
    assert refused.value.errors == [{"field": "recipients.0.address", "message": ANY}]


def test_an_allowed_address_may_be_a_webhook_url() -> None:
    allowed = EgressPolicy.parse(["127.0.0.1"])
    url = "http://127.0.0.1:8080/hook"
    assert check_address_for("webhook", url, "x", allowed) == url
    assert (
        check_address_for("webhook", "https://example.com/h?a=1", "x")
        == "https://example.com/h?a=1"
    )


def test_the_outbox_writes_each_delivery_once_as_an_eml_file(tmp_path: Path) -> None:
    outbox = OutboxChannel(tmp_path / "outbox", "noreply@example.com")
    sent = outbox.send(_outgoing())
    outbox.send(_outgoing())  # a second send of the same delivery replaces its file
    (path,) = (tmp_path / "outbox").iterdir()
    assert path.name == "01890a5d-ac96-774b-bcce-b302099a8057.eml"
    mail = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert mail["To"] == "ada@example.com" and sent.provider == "outbox"
    assert sent.provider_message_id == mail["Message-ID"]


def test_full_jitter_spreads_retries_from_zero_to_the_exponential_delay() -> None:
    policy_ = RetryPolicy(10, dt.timedelta(seconds=5), dt.timedelta(hours=2), jitter="full")
    rng = random.Random(7)
    delays = [policy_.backoff(4, rng).total_seconds() for _ in range(500)]
    assert min(delays) < 4 and max(delays) > 36 and all(0 <= d <= 40 for d in delays)
    assert all(policy_.backoff(40, rng) <= dt.timedelta(hours=2) for _ in range(100))


def test_conveyor_dev_writes_email_to_its_outbox(tmp_path: Path) -> None:
    settings = embedded_settings(stack.test_settings(data_dir=tmp_path / "data"))
    assert settings.email_transport == "outbox"
    assert settings.outbox_dir == (tmp_path / "data").resolve() / "outbox"
    chosen = embedded_settings(
        stack.test_settings(data_dir=tmp_path / "data", email_transport="smtp")
    )
    assert chosen.email_transport == "smtp"


def test_a_full_window_defers_after_a_bounded_wait_even_for_an_hourly_limit() -> None:
    limiter = WindowRateLimiter(StubBackend(), "test-hourly", limit=1, window=3600)  # type: ignore[no-untyped-call]
    outbox = _Counting()
    channel = RateLimitedChannel(outbox, limiter, Limit(1, 3600), max_wait=0.3)
    channel.send(_outgoing())
    started = time.monotonic()
    with pytest.raises(RetryLater) as deferred:
        channel.send(_outgoing())
    assert time.monotonic() - started < 3  # not a whole hour
    assert deferred.value.deferred and deferred.value.delay >= dt.timedelta(hours=1)
    assert outbox.sent == 1
    assert RateLimitedChannel(outbox, limiter, Limit(1, 3600)).max_wait == MAX_WAIT == 10


class _Counting:
    name, provider = "email", "counting"

    def __init__(self) -> None:
        self.sent = 0

    def send(self, message: Outgoing) -> Sent:
        self.sent += 1
        return Sent(self.provider)


def test_rate_limits_are_read_from_provider_pairs() -> None:
    settings = stack.test_settings(notification_rate_limits="smtp=20/s, http=600/m")
    assert settings.notification_rate_limits == {"smtp": "20/s", "http": "600/m"}
    assert parse_limit("600/m") == Limit(600, 60)
    for bad in ("smtp", "smtp=0/s", "smtp=5/d", "=5/s"):
        with pytest.raises(ValueError):
            stack.test_settings(notification_rate_limits=bad)
    assert stack.test_settings(notification_rate_limits="").notification_rate_limits is None


def test_a_5xx_to_the_recipient_is_a_bounce_and_a_4xx_is_retried() -> None:
    with smtp_server() as (mailbox, port):
        smtp = SmtpChannel(stack.test_settings(smtp_host="127.0.0.1", smtp_port=port))
        with pytest.raises(BouncedAddressError, match="550 5\\.1\\.1 no such mailbox"):
            smtp.send(_outgoing(address="bounce@example.com"))
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.send(_outgoing(address="greylist@example.com"))
        assert not isinstance(refused.value, PermanentDeliveryError)
        assert smtp.send(_outgoing()).provider == "smtp" and mailbox.count() == 1
