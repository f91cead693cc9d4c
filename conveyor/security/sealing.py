"""Secrets kept encrypted at rest (a TOTP secret): AES-256-GCM with a key derived from the
deployment's secret key, a random nonce per value, and the owner's id as associated data, so
a sealed value copied to another row does not open."""

from __future__ import annotations

import base64
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: The version before the dot of every sealed value: a new scheme gets a new one.
VERSION = "v1"
NONCE_BYTES = 12  # 96 bits, GCM's own nonce length


class UnsealError(ValueError):
    """A sealed value that this key cannot open: another key, another owner, or altered."""


class Sealer:
    """Seals and opens values with one key derived from a secret for one purpose (`info`)."""

    def __init__(self, secret: str, info: bytes) -> None:
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
        self._aead = AESGCM(kdf.derive(secret.encode()))

    def seal(self, value: str, owner: bytes) -> str:
        """`v1.<base64 of nonce + ciphertext>` of `value`, bound to `owner`."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, value.encode(), owner)
        return f"{VERSION}.{base64.urlsafe_b64encode(sealed).decode('ascii')}"

    def open(self, sealed: str, owner: bytes) -> str:
        """The value `seal(value, owner)` sealed; UnsealError otherwise."""
        version, _, body = sealed.partition(".")
        if version != VERSION:
            raise UnsealError(f"unknown sealing scheme {version[:8]!r}")
        try:
            raw = base64.urlsafe_b64decode(body)
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], owner)
        except (ValueError, InvalidTag) as exc:
            raise UnsealError("the sealed value does not open with this key") from exc
        return plain.decode()
