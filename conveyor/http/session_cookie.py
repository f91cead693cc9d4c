"""The browser's session cookie: what it holds, how it is signed, and the CSRF token of its
session.

The cookie names a sign-in session (an `auth_sessions` row) and carries an HMAC of its id
under a key derived from CONVEYOR_SECRET_KEY, so a copy of the database alone cannot make a
cookie. The CSRF token of a session is another HMAC of its id under the same key with
another label: a page's forms carry it, and a site that can make the browser send the cookie
can neither read nor compute it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass

from conveyor.errors import ConfigurationError
from conveyor.settings import Settings

#: The cookie's name over plain HTTP (`conveyor dev`, a test server).
COOKIE = "conveyor_session"
#: Its name over TLS: browsers take a `__Host-` cookie only with Secure, Path=/ and no
#: Domain, so a neighbouring subdomain cannot plant one.
SECURE_COOKIE = "__Host-conveyor_session"
#: Separates this key from every other use of the secret key (cursors, links, tokens).
KEY_LABEL = b"conveyor browser session cookie v1"
_SESSION = b"session:"
_CSRF = b"csrf:"
#: Characters of a cookie value: 32 hex digits, a dot, 43 base64url characters.
MAX_VALUE = 80


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SessionCookies:
    """Makes and reads session cookie values, and the CSRF token of each session."""

    key: bytes

    @classmethod
    def of(cls, settings: Settings) -> SessionCookies:
        """Cookies under a key derived from the secret key; ConfigurationError without one."""
        if settings.secret_key is None:
            raise ConfigurationError("CONVEYOR_SECRET_KEY is not set: it signs session cookies")
        secret = settings.secret_key.get_secret_value().encode()
        return cls(hmac.new(secret, KEY_LABEL, hashlib.sha256).digest())

    def _mac(self, label: bytes, session_id: uuid.UUID) -> str:
        return _b64(hmac.new(self.key, label + session_id.bytes, hashlib.sha256).digest())

    def value(self, session_id: uuid.UUID) -> str:
        """The cookie value naming `session_id`."""
        return f"{session_id.hex}.{self._mac(_SESSION, session_id)}"

    def read(self, value: str | None) -> uuid.UUID | None:
        """The session a cookie value names, or None unless this deployment made it."""
        if not value or len(value) > MAX_VALUE:
            return None
        hex_id, dot, mac = value.partition(".")
        if not dot:
            return None
        try:
            session_id = uuid.UUID(hex=hex_id)
        except ValueError:
            return None
        if session_id.hex != hex_id or not hmac.compare_digest(
            mac, self._mac(_SESSION, session_id)
        ):
            return None
        return session_id

    def csrf(self, session_id: uuid.UUID) -> str:
        """The CSRF token the forms of `session_id`'s pages carry."""
        return self._mac(_CSRF, session_id)
