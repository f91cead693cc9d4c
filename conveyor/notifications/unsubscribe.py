"""Signed one-click unsubscribe links: who, from what, on which channel; no login needed.

A token is the JSON `[subscriber, topic, channel]` in URL-safe base64 and an HMAC-SHA256 tag
under a key derived from `CONVEYOR_SECRET_KEY`. It does not expire (a link in an old email
must still work) and only says "this subscriber opts out of this": the worst a leaked token
does is unsubscribe its recipient.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from urllib.parse import urlencode

from conveyor.errors import BadRequestError, ConfigurationError
from conveyor.settings import Settings

#: Separates this key from every other use of the secret key.
KEY_LABEL = b"conveyor unsubscribe v1"
TAG_BYTES = 16
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True)
class OptOut:
    """What an unsubscribe token asks: `subscriber` opts out of `topic` on `channel`."""

    subscriber: str
    topic: str
    channel: str


@dataclass
class UnsubscribeLinks:
    """Issues and reads unsubscribe tokens, and builds the links that carry them.

    `base_url` may be changed once the server knows its port (`conveyor dev --port 0`)."""

    key: bytes
    base_url: str

    @classmethod
    def of(cls, settings: Settings) -> UnsubscribeLinks:
        if settings.secret_key is None:
            raise ConfigurationError("CONVEYOR_SECRET_KEY is not set: it signs unsubscribe links")
        secret = settings.secret_key.get_secret_value().encode()
        base = str(settings.public_url) if settings.public_url else None
        base = base or f"http://{settings.host}:{settings.port}"
        return cls(hmac.new(secret, KEY_LABEL, hashlib.sha256).digest(), base.rstrip("/"))

    def issue(self, opt_out: OptOut) -> str:
        body = json.dumps([opt_out.subscriber, opt_out.topic, opt_out.channel]).encode()
        tag = hmac.new(self.key, body, hashlib.sha256).digest()[:TAG_BYTES]
        return f"{_b64(body)}.{_b64(tag)}"

    def url(self, opt_out: OptOut) -> str:
        """The one-click link (`POST` per RFC 8058, or `GET` from a browser)."""
        return f"{self.base_url}/v1/unsubscribe?{urlencode({'token': self.issue(opt_out)})}"

    def read(self, token: str) -> OptOut:
        """The opt-out a token asks for; 400 naming `token` unless this deployment issued it."""
        body_text, dot, tag_text = token.partition(".")
        if dot and len(token) <= MAX_TOKEN_LENGTH:
            try:
                body, tag = _unb64(body_text), _unb64(tag_text)
            except ValueError:
                body, tag = b"", b""
            expected = hmac.new(self.key, body, hashlib.sha256).digest()[:TAG_BYTES]
            if body and hmac.compare_digest(tag, expected):
                subscriber, topic, channel = json.loads(body)
                return OptOut(subscriber, topic, channel)
        raise BadRequestError(
            "invalid unsubscribe link: use the link of the message as it came",
            errors=[{"field": "token", "message": "not an unsubscribe token this server issued"}],
        )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
