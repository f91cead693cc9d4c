"""The notification channels that speak HTTP: signed webhooks, a generic SMS or push provider,
and the `log` provider that stands in for both in the embedded mode.

Each `send()` blocks (a notification job calls it from a worker thread) and goes through the
process's shared HTTP client, so it has its timeouts, its response size limit and its refusal
of non-public addresses. What an answer means, for every channel here:

- 2xx: sent;
- 429 or 503 with `Retry-After`: `RetryLater` that long;
- 408, 429, 5xx, no answer at all: a transient error (retried with backoff);
- a redirect: permanent (not followed: a webhook must be given its final URL);
- any other 4xx, a refused address: `PermanentDeliveryError` (not retried).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from multidict import CIMultiDict

from conveyor.egress import EgressPolicy
from conveyor.errors import (
    ConfigurationError,
    DestinationRefusedError,
    PermanentDeliveryError,
    ProviderUnavailableError,
    RetryLater,
)
from conveyor.notifications.channels import Channel, Outgoing, Sent
from conveyor.outbound import HttpClient, HttpResponse
from conveyor.settings import Settings

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Conveyor-Signature"
DELIVERY_HEADER = "Conveyor-Delivery"
KIND_HEADER = "Conveyor-Kind"
#: How far a signature's timestamp may be from the receiver's clock (seconds).
DEFAULT_TOLERANCE = 300
#: How much of an error answer's body is kept in the delivery's error.
EXCERPT_CHARS = 200
#: How much of a provider's answer is read (a message id, an error's excerpt): a receiver
#: that answers megabytes costs 64 KiB, not the client's 10 MiB cap.
READ_AT_MOST = 64 * 1024

#: The fields of a message a provider's body template may name as `$field`.
MESSAGE_FIELDS = (
    "delivery_id",
    "notification_id",
    "kind",
    "channel",
    "address",
    "subject",
    "text",
    "html",
    "data",
)


# --- signing --------------------------------------------------------------------------------


def owner_key(secret: str, owner_id: uuid.UUID | str) -> str:
    """The webhook signing key of one owner: the hex HMAC-SHA256 of `"webhook:<owner id>"`
    under the deployment's secret. Each owner's receivers get their own key
    (`GET /v1/me/webhook-key`), so no member can have content of their choosing signed with
    a key another owner's receiver trusts."""
    return hmac.new(secret.encode(), f"webhook:{owner_id}".encode(), hashlib.sha256).hexdigest()


def signed_bytes(timestamp: int | str, owner: str, delivery_id: str, body: bytes) -> bytes:
    """What a signature covers: `"<time>.<owner id>.<delivery id>."` then the raw body."""
    return f"{timestamp}.{owner}.{delivery_id}.".encode() + body


def sign(key: str, timestamp: int, owner: str, delivery_id: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of the signed bytes under `key` (an owner's key)."""
    signed = signed_bytes(timestamp, owner, delivery_id, body)
    return hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(
    secrets: Sequence[str], timestamp: int, owner: uuid.UUID | str, delivery_id: str, body: bytes
) -> str:
    """`t=<unix time>,o=<owner id>,v1=<hex>`, with one `v1` per deployment secret (the
    current one, then the old one while secrets are rotated), each under the owner's key."""
    signatures = (
        f"v1={sign(owner_key(s, owner), timestamp, str(owner), delivery_id, body)}" for s in secrets
    )
    return ",".join([f"t={timestamp}", f"o={owner}", *signatures])


def verify_signature(
    key: str,
    header: str,
    delivery_id: str,
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> bool:
    """Whether `header` (a `Conveyor-Signature` value) signs `body` (the request's raw bytes)
    and `delivery_id` (its `Conveyor-Delivery` header) with `key` (the owner's webhook key),
    at a time within `tolerance` seconds of `now`.

    The receiver's side of webhook signing, standard library only: copy it into a receiver.
    """
    timestamp, owner, signatures = "", "", []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            timestamp = value
        elif name == "o":
            owner = value
        elif name == "v1":
            signatures.append(value)
    if not (timestamp.isascii() and timestamp.isdigit()) or not owner or not signatures:
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False  # an old request replayed, or a clock far off
    signed = f"{timestamp}.{owner}.{delivery_id}.".encode() + body
    expected = hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


# --- answers --------------------------------------------------------------------------------


def check_answer(response: HttpResponse, what: str) -> None:
    """Raise what `response` means unless it is a 2xx (see the module's docstring)."""
    status = response.status
    if 200 <= status < 300:
        return
    detail = f"{what} answered {status}{excerpt(response)}"
    if status in (429, 503):
        wait = response.retry_after()
        if wait is not None:
            raise RetryLater(wait, f"{detail}; trying again in {wait:g}s, as it asked")
    if status in (408, 429) or status >= 500:
        raise ProviderUnavailableError(detail)
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        target = urlsplit(location).hostname or location[:EXCERPT_CHARS] or "nowhere"
        raise PermanentDeliveryError(
            f"{what} answered {status}, a redirect (to {target}); redirects are not "
            "followed: give the final URL"
        )
    raise PermanentDeliveryError(detail)


def excerpt(response: HttpResponse) -> str:
    text = " ".join(response.text().split())
    if not text:
        return ""
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "…"
    return f": {text}"


def post(
    http: HttpClient,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout_seconds: float | None,
) -> HttpResponse:
    """POST without following redirects; a refused destination is a permanent failure."""
    try:
        return http.request(
            "POST",
            url,
            data=body,
            headers=headers,
            timeout_seconds=timeout_seconds,
            follow_redirects=False,
            read_at_most=READ_AT_MOST,
        )
    except DestinationRefusedError as exc:
        raise PermanentDeliveryError(exc.detail) from exc


def own_headers(message: Outgoing, ours: Mapping[str, str]) -> CIMultiDict[str]:
    """The message's headers, with ours in place of any of the same name (in any case)."""
    headers = CIMultiDict(message.headers)
    for name, value in ours.items():
        headers[name] = value
    return headers


def json_body(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise PermanentDeliveryError(f"the message's data is not JSON: {exc}") from exc


# --- webhooks -------------------------------------------------------------------------------


class WebhookChannel:
    """POSTs the message's `data` as JSON to the message's address (the webhook URL), signed.

    Headers: `Conveyor-Signature: t=<unix time>,o=<owner id>,v1=<hex HMAC-SHA256 of
    "t.owner.delivery.body" under the owner's key>` (one `v1` per deployment secret while
    secrets are rotated), `Conveyor-Delivery: <delivery id>` (the same on every
    attempt of a delivery: receivers drop what they have seen), `Conveyor-Kind: <kind>`.
    """

    name = "webhook"
    provider = "webhook"

    def __init__(
        self,
        http: HttpClient,
        secrets: Sequence[str],
        *,
        timeout_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secrets or not all(secrets):
            raise ConfigurationError("webhooks need a signing key: set CONVEYOR_WEBHOOK_SECRET")
        self.http = http
        self.secrets = tuple(secrets)
        self.timeout_seconds = timeout_seconds
        self.clock = clock

    def send(self, message: Outgoing) -> Sent:
        if message.owner_id is None:
            raise PermanentDeliveryError("a webhook needs the notification's owner to be signed")
        body = json_body(message.data if message.data is not None else {})
        timestamp = int(self.clock())
        delivery = str(message.delivery_id)
        headers = own_headers(
            message,
            {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature_header(
                    self.secrets, timestamp, message.owner_id, delivery, body
                ),
                DELIVERY_HEADER: delivery,
                KIND_HEADER: message.kind,
            },
        )
        response = post(self.http, message.address, body, headers, self.timeout_seconds)
        host = urlsplit(message.address).hostname or "?"
        check_answer(response, f"the webhook at {host}")
        return Sent(self.provider)


# --- providers ------------------------------------------------------------------------------


class BodyTemplate:
    """A provider's JSON body, where a string `"$field"` stands for one of the message's
    fields (`MESSAGE_FIELDS`), of any JSON type (`"$data"` is an object); `"$$..."` is a
    string starting with one `$`. Other strings, numbers and the structure are kept."""

    _PLACEHOLDER = re.compile(r"\$([a-z_]+)")

    def __init__(self, template: Any) -> None:
        self.template = template
        unknown = sorted(set(self._names(template)) - set(MESSAGE_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown field {', '.join('$' + n for n in unknown)} "
                f"(known: {', '.join(MESSAGE_FIELDS)})"
            )

    def _names(self, node: Any) -> list[str]:
        if isinstance(node, dict):
            return [name for value in node.values() for name in self._names(value)]
        if isinstance(node, list):
            return [name for value in node for name in self._names(value)]
        if isinstance(node, str) and node.startswith("$") and not node.startswith("$$"):
            match = self._PLACEHOLDER.fullmatch(node)
            return [match.group(1) if match else node[1:]]
        return []

    def render(self, message: Outgoing) -> Any:
        return self._fill(self.template, message)

    def _fill(self, node: Any, message: Outgoing) -> Any:
        if isinstance(node, dict):
            return {key: self._fill(value, message) for key, value in node.items()}
        if isinstance(node, list):
            return [self._fill(value, message) for value in node]
        if isinstance(node, str) and node.startswith("$$"):
            return node[1:]
        if isinstance(node, str) and node.startswith("$"):
            value = getattr(message, node[1:])
            return str(value) if node in ("$delivery_id", "$notification_id") else value
        return node


class HttpProviderChannel:
    """An SMS or push provider with an HTTP API: POSTs a JSON body made from the message by
    a template, with an auth header and `Idempotency-Key: <delivery id>` (providers that
    honour it send a retried delivery once), and reads the provider's message id from its
    JSON answer.

    A provider with a different shape is a subclass that overrides `build_body` or
    `message_id` (see the README's "Adding a provider").
    """

    def __init__(
        self,
        http: HttpClient,
        *,
        name: str,
        provider: str,
        url: str,
        body: Any,
        auth_header: str | None = None,
        message_id_field: str = "id",
        timeout_seconds: float | None = None,
    ) -> None:
        self.http = http
        self.name = name
        self.provider = provider
        self.url = url
        self.template = BodyTemplate(body)
        self.auth: tuple[str, str] | None = None
        if auth_header:
            header, _, value = auth_header.partition(":")
            self.auth = (header.strip(), value.strip())
        self.message_id_field = message_id_field
        self.timeout_seconds = timeout_seconds

    def build_body(self, message: Outgoing) -> Any:
        """The JSON value POSTed for `message`."""
        return self.template.render(message)

    def message_id(self, response: HttpResponse) -> str | None:
        """The provider's id of the message it accepted, from its answer (None if absent)."""
        try:
            node: Any = response.json()
        except ValueError:
            return None
        for part in self.message_id_field.split("."):
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return None if node is None or isinstance(node, (dict, list)) else str(node)

    def send(self, message: Outgoing) -> Sent:
        body = json_body(self.build_body(message))
        ours = {"Content-Type": "application/json", "Idempotency-Key": str(message.delivery_id)}
        if self.auth is not None:
            ours[self.auth[0]] = self.auth[1]
        headers = own_headers(message, ours)
        response = post(self.http, self.url, body, headers, self.timeout_seconds)
        check_answer(response, f"the {self.name} provider {self.provider}")
        provider_id = self.message_id(response)
        if provider_id is None:  # sent all the same: failing now would send it twice
            logger.warning(
                "the %s provider %s accepted delivery %s without an id at %r",
                self.name,
                self.provider,
                message.delivery_id,
                self.message_id_field,
            )
        return Sent(self.provider, provider_id)


class LogChannel:
    """The `log` provider (the embedded mode's SMS and push): writes the message to the log
    instead of sending it."""

    provider = "log"

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, message: Outgoing) -> Sent:
        logger.info(
            "%s for %s, not sent (log provider): delivery %s, kind %s, subject %r, text %r, "
            "data %s",
            self.name,
            message.address,
            message.delivery_id,
            message.kind,
            message.subject,
            message.text,
            json.dumps(message.data),
        )
        return Sent(self.provider)


# --- from the settings ----------------------------------------------------------------------


def http_channels(settings: Settings, http: HttpClient) -> dict[str, Channel]:
    """The `webhook`, `sms` and `push` channels the settings describe, by name.

    `webhook` only if `CONVEYOR_WEBHOOK_SECRET` is set; `sms` and `push` through the generic
    HTTP provider when its URL is set, else through the `log` provider. A provider URL at an
    address that is not public and not allowed, or a bad body template, is a
    `ConfigurationError` naming its setting.
    """
    channels: dict[str, Channel] = {}
    egress = EgressPolicy.of_setting(settings.outbound_allow_hosts)
    if settings.webhook_secret is not None:
        keys = [settings.webhook_secret, settings.webhook_previous_secret]
        channels["webhook"] = WebhookChannel(
            http, [key.get_secret_value() for key in keys if key is not None]
        )
    for name in ("sms", "push"):
        url = getattr(settings, f"{name}_provider_url")
        if url is None:
            channels[name] = LogChannel(name)
            continue
        try:  # an address the client would refuse fails the start, not every delivery
            egress.check_url(str(url))
        except DestinationRefusedError as exc:
            raise ConfigurationError(f"CONVEYOR_{name.upper()}_PROVIDER_URL: {exc}") from exc
        auth = getattr(settings, f"{name}_provider_auth_header")
        variable = f"CONVEYOR_{name.upper()}_PROVIDER_BODY"
        try:
            channels[name] = HttpProviderChannel(
                http,
                name=name,
                provider=getattr(settings, f"{name}_provider_name"),
                url=str(url),
                body=json.loads(getattr(settings, f"{name}_provider_body")),
                auth_header=auth.get_secret_value() if auth is not None else None,
                message_id_field=getattr(settings, f"{name}_provider_message_id_field"),
            )
        except ValueError as exc:
            raise ConfigurationError(f"{variable}: {exc}") from exc
    return channels
