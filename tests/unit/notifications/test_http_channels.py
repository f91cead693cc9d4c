"""The HTTP channels against a real local fake provider: signed webhooks, the generic SMS and
push provider, what each answer means (sent, retry later, retried, permanent), refused
addresses, and the channels the settings build."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.aio import LoopThread
from conveyor.egress import EgressPolicy
from conveyor.errors import (
    ConfigurationError,
    OutboundHttpError,
    PermanentDeliveryError,
    PermanentJobError,
    ProviderUnavailableError,
    RetryLater,
    TransientError,
)
from conveyor.httpclient import SharedHttpClient
from conveyor.notifications.channels import Outgoing, Sent
from conveyor.notifications.http_channels import (
    BodyTemplate,
    HttpProviderChannel,
    LogChannel,
    WebhookChannel,
    http_channels,
    owner_key,
    signature_header,
    verify_signature,
)
from tests import stack
from tests.fake_provider import Answer, FakeProvider, fake_provider

SECRET = "whsec-test-0123456789abcdef"
OWNER = uuid.UUID("01890000-0000-7000-8000-000000000001")
KEY = owner_key(SECRET, OWNER)  # what the owner's receivers verify with
README = Path(__file__).resolve().parents[3] / "README.md"


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    loop = LoopThread(name="test-channels-loop")
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def http(loop: LoopThread) -> Iterator[SharedHttpClient]:
    """The shared client as a pool has it, allowed to reach the fake provider on loopback."""
    client = SharedHttpClient(
        loop, timeout_seconds=5, connect_timeout_seconds=2, egress=EgressPolicy.parse(["127.0.0.1"])
    )
    yield client
    client.close()


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with fake_provider() as provider:
        yield provider


def message(address: str, **fields: Any) -> Outgoing:
    values: dict[str, Any] = {
        "delivery_id": uuid.uuid4(),
        "notification_id": uuid.uuid4(),
        "kind": "order.shipped",
        "channel": "webhook",
        "address": address,
        "subject": "Your order shipped",
        "text": "Order 42 is on its way.",
        "data": {"order": 42, "carrier": "Postal", "note": "naïve ✓"},
        "owner_id": OWNER,
    }
    return Outgoing(**{**values, **fields})


# --- webhooks -------------------------------------------------------------------------------


def test_a_webhook_is_a_signed_json_post_of_the_messages_data(
    http: SharedHttpClient, provider: FakeProvider
) -> None:
    channel = WebhookChannel(http, [SECRET])
    sent = message(provider.url("/hooks/orders"))
    assert channel.send(sent) == Sent("webhook")
    [received] = provider.wait_for(1)
    assert (received.method, received.path) == ("POST", "/hooks/orders")
    assert received.headers["Content-Type"] == "application/json"
    assert received.json() == {"order": 42, "carrier": "Postal", "note": "naïve ✓"}
    assert received.headers["Conveyor-Delivery"] == str(sent.delivery_id)
    assert received.headers["Conveyor-Kind"] == "order.shipped"
    header = received.headers["Conveyor-Signature"]
    assert re.fullmatch(rf"t=\d+,o={OWNER},v1=[0-9a-f]{{64}}", header)
    assert verify_signature(KEY, header, str(sent.delivery_id), received.body)
    assert not verify_signature(SECRET, header, str(sent.delivery_id), received.body)


def test_each_owner_has_its_own_key_and_the_delivery_id_is_signed(
    http: SharedHttpClient, provider: FakeProvider
) -> None:
    other = uuid.uuid4()
    WebhookChannel(http, [SECRET]).send(message(provider.url("/hook"), owner_id=other))
    [received] = provider.wait_for(1)
    header, delivery = received.headers["Conveyor-Signature"], received.headers["Conveyor-Delivery"]
    assert verify_signature(owner_key(SECRET, other), header, delivery, received.body)
    # another owner's receiver refuses it, even with the owner id in the header swapped
    assert not verify_signature(KEY, header, delivery, received.body)
    swapped = header.replace(str(other), str(OWNER))
    assert not verify_signature(KEY, swapped, delivery, received.body)
    # replayed under a new delivery id: refused
    assert not verify_signature(owner_key(SECRET, other), header, str(uuid.uuid4()), received.body)
    assert owner_key(SECRET, other) != KEY


def test_a_webhook_without_an_owner_fails(http: SharedHttpClient, provider: FakeProvider) -> None:
    with pytest.raises(PermanentDeliveryError, match="owner"):
        WebhookChannel(http, [SECRET]).send(message(provider.url("/hook"), owner_id=None))


def the_readme_recipe() -> Callable[[str, str, str, bytes], bool]:
    """The verification function of the README's webhook section, as a receiver copies it."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    [recipe] = [block for block in blocks if "def verify_conveyor_signature" in block]
    scope: dict[str, Any] = {}
    exec(recipe, scope)  # the documented code, exactly
    return scope["verify_conveyor_signature"]  # type: ignore[no-any-return]


def test_the_signature_is_verified_by_the_documented_recipe(
    http: SharedHttpClient, provider: FakeProvider
) -> None:
    verify = the_readme_recipe()
    WebhookChannel(http, [SECRET]).send(message(provider.url("/hook")))
    [received] = provider.wait_for(1)
    header, delivery = received.headers["Conveyor-Signature"], received.headers["Conveyor-Delivery"]
    assert verify(KEY, header, delivery, received.body)
    assert not verify(owner_key("another-secret", OWNER), header, delivery, received.body)
    assert not verify(KEY, header, delivery, received.body.replace(b"42", b"43"))
    assert not verify(KEY, header, str(uuid.uuid4()), received.body)  # another delivery id
    old = signature_header([SECRET], int(time.time()) - 3600, OWNER, delivery, received.body)
    assert not verify(KEY, old, delivery, received.body)  # a replay an hour later


def test_a_signature_is_refused_when_anything_is_off() -> None:
    body, now, d = b'{"a":1}', 1_700_000_000, "d-1"
    header = signature_header([SECRET], now, OWNER, d, body)
    t, o, v1 = header.split(",")
    assert verify_signature(KEY, header, d, body, now=now + 299)
    assert not verify_signature(KEY, header, d, body, now=now + 301)
    assert not verify_signature(KEY, header, d, body, now=now - 301)
    assert not verify_signature(KEY, header, d, body + b" ", now=now)
    assert not verify_signature(KEY, header, "d-2", body, now=now)
    assert not verify_signature("wrong", header, d, body, now=now)
    assert not verify_signature(KEY, f"{o},{v1}", d, body, now=now)  # no t=
    assert not verify_signature(KEY, f"{t},{v1}", d, body, now=now)  # no o=
    assert not verify_signature(KEY, f"{t},{o}", d, body, now=now)  # no v1=
    assert not verify_signature(KEY, "garbage", d, body, now=now)
    assert not verify_signature(KEY, f"t=abc,{o},{v1}", d, body, now=now)


def test_while_keys_are_rotated_both_sign_every_delivery(
    http: SharedHttpClient, provider: FakeProvider
) -> None:
    WebhookChannel(http, ["new-key", "old-key"]).send(message(provider.url("/hook")))
    [received] = provider.wait_for(1)
    header = received.headers["Conveyor-Signature"]
    delivery = received.headers["Conveyor-Delivery"]
    assert header.count("v1=") == 2
    assert verify_signature(owner_key("new-key", OWNER), header, delivery, received.body)
    assert verify_signature(owner_key("old-key", OWNER), header, delivery, received.body)


def test_the_same_delivery_carries_the_same_delivery_id_on_every_attempt(
    http: SharedHttpClient, provider: FakeProvider
) -> None:
    provider.plan(500)
    channel, sent = WebhookChannel(http, [SECRET]), message(provider.url("/hook"))
    with pytest.raises(ProviderUnavailableError):
        channel.send(sent)
    channel.send(sent)
    first, second = provider.wait_for(2)
    assert first.headers["Conveyor-Delivery"] == second.headers["Conveyor-Delivery"]


def test_a_webhook_without_data_posts_an_empty_object(
    http: SharedHttpClient, provider: FakeProvider
) -> None:
    WebhookChannel(http, [SECRET]).send(message(provider.url("/hook"), data=None))
    assert provider.wait_for(1)[0].json() == {}


def test_a_big_answer_is_read_only_in_part_and_is_no_error_of_its_own(
    loop: LoopThread, provider: FakeProvider
) -> None:
    allowed = EgressPolicy.parse(["127.0.0.1"])
    small = SharedHttpClient(loop, max_response_bytes=100_000, egress=allowed)
    try:
        big_body = {"x": "y" * 200_000}
        provider.plan(Answer(200, json=big_body), Answer(500, json=big_body))
        channel = WebhookChannel(small, [SECRET])
        sent = channel.send(message(provider.url("/hook")))  # not a size error
        assert sent == Sent("webhook")
        with pytest.raises(ProviderUnavailableError, match="answered 500"):
            channel.send(message(provider.url("/hook")))
        provider.plan(Answer(200, json={"x": "y" * 200_000}))
        big = small.request("GET", provider.url("/x"), read_at_most=1000)
        assert len(big.body) == 1000
    finally:
        small.close()


def test_webhooks_need_a_signing_key(http: SharedHttpClient) -> None:
    with pytest.raises(ConfigurationError, match="CONVEYOR_WEBHOOK_SECRET"):
        WebhookChannel(http, [])


# --- what answers mean ----------------------------------------------------------------------


@pytest.fixture(params=["webhook", "sms"])
def channel(request: pytest.FixtureRequest, http: SharedHttpClient, provider: FakeProvider) -> Any:
    """Each channel, aimed at the fake provider: answers mean the same to both."""
    if request.param == "webhook":
        webhook = WebhookChannel(http, [SECRET], timeout_seconds=0.5)
        return lambda: webhook.send(message(provider.url("/hook")))
    sms = HttpProviderChannel(
        http,
        name="sms",
        provider="fake",
        url=provider.url("/sms"),
        body={"to": "$address", "text": "$text"},
        timeout_seconds=0.5,
    )
    return lambda: sms.send(message("+15550100", channel="sms"))


@pytest.mark.parametrize(("status", "retry_after"), [(429, "30"), (503, "7")])
def test_429_or_503_with_retry_after_means_retry_later_that_long(
    channel: Callable[[], Sent], provider: FakeProvider, status: int, retry_after: str
) -> None:
    provider.plan(Answer(status, retry_after=retry_after))
    with pytest.raises(RetryLater) as caught:
        channel()
    assert caught.value.delay.total_seconds() == float(retry_after)
    assert f"answered {status}" in str(caught.value)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_408_429_and_5xx_are_retried(
    channel: Callable[[], Sent], provider: FakeProvider, status: int
) -> None:
    provider.plan(status)
    with pytest.raises(ProviderUnavailableError, match=f"answered {status}") as caught:
        channel()
    assert isinstance(caught.value, TransientError)
    assert channel().provider in ("webhook", "fake")  # the next attempt goes through
    assert provider.count() == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422])
def test_other_4xx_are_permanent(
    channel: Callable[[], Sent], provider: FakeProvider, status: int
) -> None:
    provider.plan(Answer(status, json={"error": "number is not a mobile"}))
    with pytest.raises(PermanentDeliveryError, match=f"answered {status}") as caught:
        channel()
    assert isinstance(caught.value, PermanentJobError)  # not retried
    assert "number is not a mobile" in str(caught.value)  # what the provider said


def test_a_long_error_answer_is_cut_short(
    channel: Callable[[], Sent], provider: FakeProvider
) -> None:
    provider.plan(Answer(400, json={"error": "x" * 5000}))
    with pytest.raises(PermanentDeliveryError) as caught:
        channel()
    assert len(str(caught.value)) < 400


def test_a_provider_that_hangs_times_out_as_a_transient_error(
    channel: Callable[[], Sent], provider: FakeProvider
) -> None:
    provider.plan(Answer(hang=True))
    started = time.monotonic()
    with pytest.raises(OutboundHttpError):
        channel()
    assert time.monotonic() - started < 4
    provider.release()
    assert provider.count() == 1


def test_a_redirect_is_not_followed(channel: Callable[[], Sent], provider: FakeProvider) -> None:
    provider.plan(Answer(302, location="http://127.0.0.1:1/elsewhere"))
    with pytest.raises(PermanentDeliveryError, match="redirects are not followed"):
        channel()
    assert provider.count() == 1


# --- refused addresses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "(loopback)"),
        ("10.0.0.8", "(private)"),
        ("169.254.169.254", "(link-local)"),
        ("[::1]", "(loopback)"),
        ("localhost", "localhost resolves to"),
    ],
)
def test_a_webhook_to_an_address_that_is_not_public_is_refused_for_good(
    loop: LoopThread, provider: FakeProvider, host: str, reason: str
) -> None:
    strict = SharedHttpClient(loop, timeout_seconds=2, connect_timeout_seconds=1)
    try:
        channel = WebhookChannel(strict, [SECRET])
        with pytest.raises(PermanentDeliveryError, match=re.escape(reason)):
            channel.send(message(f"http://{host}:{provider.port}/hook"))
    finally:
        strict.close()
    assert provider.count() == 0


def test_a_redirect_to_loopback_reaches_nothing(loop: LoopThread, provider: FakeProvider) -> None:
    # The receiver is allowed by name; it answers with a redirect to loopback.
    client = SharedHttpClient(loop, egress=EgressPolicy.parse(["localhost"]))
    try:
        provider.plan(Answer(307, location=provider.url("/internal")))
        with pytest.raises(PermanentDeliveryError, match=r"redirect \(to 127\.0\.0\.1\)"):
            WebhookChannel(client, [SECRET]).send(message(f"http://localhost:{provider.port}/hook"))
    finally:
        client.close()
    assert [r.path for r in provider.received] == ["/hook"]


def test_a_webhook_url_that_is_not_http_is_refused_for_good(http: SharedHttpClient) -> None:
    with pytest.raises(PermanentDeliveryError, match="only http and https"):
        WebhookChannel(http, [SECRET]).send(message("file:///etc/passwd"))


# --- the generic provider -------------------------------------------------------------------


def test_a_provider_gets_the_mapped_body_its_auth_and_the_idempotency_key(
    http: SharedHttpClient, provider: FakeProvider
) -> None:
    provider.plan(Answer(201, json={"messages": [{"sid": "SM123"}]}))
    channel = HttpProviderChannel(
        http,
        name="push",
        provider="fakepush",
        url=provider.url("/v1/send"),
        body={
            "token": "$address",
            "notification": {"title": "$subject", "body": "$text"},
            "data": "$data",
            "ref": "$delivery_id",
            "priority": "high",
            "ttl": 3600,
            "tags": ["$kind", "$$literal"],
        },
        auth_header="Authorization: Bearer sk-test",
        message_id_field="messages.0.sid",
    )
    sent = message("device-token-1", channel="push")
    assert channel.send(sent) == Sent("fakepush", "SM123")
    [received] = provider.wait_for(1)
    assert received.path == "/v1/send"
    assert received.headers["Authorization"] == "Bearer sk-test"
    assert received.headers["Idempotency-Key"] == str(sent.delivery_id)
    assert received.json() == {
        "token": "device-token-1",
        "notification": {"title": "Your order shipped", "body": "Order 42 is on its way."},
        "data": {"order": 42, "carrier": "Postal", "note": "naïve ✓"},
        "ref": str(sent.delivery_id),
        "priority": "high",
        "ttl": 3600,
        "tags": ["order.shipped", "$literal"],
    }


def test_a_resent_delivery_carries_the_same_idempotency_key(
    http: SharedHttpClient, provider: FakeProvider
) -> None:
    channel = HttpProviderChannel(
        http, name="sms", provider="fake", url=provider.url("/sms"), body={"to": "$address"}
    )
    sent = message("+15550100", channel="sms")
    assert channel.send(sent).provider_message_id == "msg-1"
    assert channel.send(sent).provider_message_id == "msg-2"
    keys = {r.headers["Idempotency-Key"] for r in provider.wait_for(2)}
    assert keys == {str(sent.delivery_id)}  # the provider can tell it is the same message


def test_an_accepted_message_without_an_id_is_sent_all_the_same(
    http: SharedHttpClient, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    provider.plan(Answer(202, json={"queued": True}))
    channel = HttpProviderChannel(
        http, name="sms", provider="fake", url=provider.url("/sms"), body={"to": "$address"}
    )
    with caplog.at_level(logging.WARNING, "conveyor.notifications.http_channels"):
        assert channel.send(message("+15550100")) == Sent("fake", None)
    assert "without an id" in caplog.text


@pytest.mark.parametrize(
    ("template", "unknown"),
    [({"to": "$phone"}, "$phone"), ({"a": ["$Text"]}, "$Text"), ({"a": {"b": "$"}}, "$")],
)
def test_a_body_template_naming_an_unknown_field_is_refused(template: Any, unknown: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"unknown field {unknown}")):
        BodyTemplate(template)


# --- the log provider and the settings ------------------------------------------------------


def test_the_log_provider_writes_the_message_to_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = message("+15550100", channel="sms", text="Your code is 123456")
    with caplog.at_level(logging.INFO, "conveyor.notifications.http_channels"):
        assert LogChannel("sms").send(sent) == Sent("log")
    assert "Your code is 123456" in caplog.text
    assert str(sent.delivery_id) in caplog.text


def test_without_provider_urls_sms_and_push_go_to_the_log(http: SharedHttpClient) -> None:
    channels = http_channels(stack.test_settings(), http)
    assert sorted(channels) == ["push", "sms"]  # and no webhooks without a signing key
    assert isinstance(channels["sms"], LogChannel) and channels["sms"].name == "sms"
    assert (channels["push"].name, channels["push"].provider) == ("push", "log")


def test_the_settings_configure_the_http_provider_and_webhooks(
    http: SharedHttpClient, provider: FakeProvider
) -> None:
    settings = stack.test_settings(
        webhook_secret=SECRET,
        webhook_previous_secret="old-key",
        sms_provider_url=provider.url("/sms"),
        sms_provider_name="acme-sms",
        sms_provider_auth_header="X-Api-Key: k-123",
        sms_provider_body='{"msisdn": "$address", "message": "$text"}',
        sms_provider_message_id_field="result.id",
        outbound_allow_hosts="127.0.0.1",  # the fake provider
    )
    channels = http_channels(settings, http)
    assert isinstance(channels["webhook"], WebhookChannel)
    assert channels["webhook"].secrets == (SECRET, "old-key")
    assert isinstance(channels["push"], LogChannel)
    provider.plan(Answer(200, json={"result": {"id": 987}}))
    assert channels["sms"].send(message("+15550100", channel="sms")) == Sent("acme-sms", "987")
    [received] = provider.wait_for(1)
    assert received.headers["X-Api-Key"] == "k-123"
    assert received.json() == {"msisdn": "+15550100", "message": "Order 42 is on its way."}


def test_a_body_template_with_an_unknown_field_names_its_setting(http: SharedHttpClient) -> None:
    settings = stack.test_settings(
        push_provider_url="https://push.example.com/send", push_provider_body='{"to": "$phone"}'
    )
    with pytest.raises(ConfigurationError, match="CONVEYOR_PUSH_PROVIDER_BODY: unknown field"):
        http_channels(settings, http)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sms_provider_body", "not json"),
        ("sms_provider_body", "[1, 2]"),
        ("push_provider_auth_header", "no colon here"),
        ("push_provider_auth_header", "Authorization:"),
    ],
)
def test_bad_provider_settings_are_refused_at_start(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        stack.test_settings(**{name: value})


def test_empty_secrets_and_urls_are_unset() -> None:
    settings = stack.test_settings(
        webhook_secret="", sms_provider_url="", push_provider_auth_header=""
    )
    assert (settings.webhook_secret, settings.sms_provider_url) == (None, None)
    assert settings.push_provider_auth_header is None


def test_the_messages_headers_are_sent_but_cannot_replace_the_channels_own(
    http: SharedHttpClient, provider: FakeProvider
) -> None:
    headers = {"X-Tenant": "acme", "conveyor-signature": "t=1,v1=forged", "idempotency-key": "x"}
    WebhookChannel(http, [SECRET]).send(message(provider.url("/hook"), headers=headers))
    HttpProviderChannel(
        http, name="sms", provider="fake", url=provider.url("/sms"), body={"to": "$address"}
    ).send(message("+15550100", headers=headers))
    hook, sms = provider.wait_for(2)
    assert hook.headers["X-Tenant"] == sms.headers["X-Tenant"] == "acme"
    assert hook.headers.getall("Conveyor-Signature") != ["t=1,v1=forged"]
    assert len(hook.headers.getall("Conveyor-Signature")) == 1
    assert verify_signature(
        KEY, hook.headers["Conveyor-Signature"], hook.headers["Conveyor-Delivery"], hook.body
    )
    assert sms.headers.getall("Idempotency-Key") != ["x"]
    assert len(sms.headers.getall("Idempotency-Key")) == 1


def test_a_provider_url_at_an_address_that_is_not_allowed_fails_the_start(
    http: SharedHttpClient,
) -> None:
    url = "http://10.0.0.5:8080/sms"
    settings = stack.test_settings(sms_provider_url=url)
    with pytest.raises(ConfigurationError, match=r"CONVEYOR_SMS_PROVIDER_URL: .*\(private\)"):
        http_channels(settings, http)
    allowed = stack.test_settings(sms_provider_url=url, outbound_allow_hosts="10.0.0.0/24")
    assert isinstance(http_channels(allowed, http)["sms"], HttpProviderChannel)
