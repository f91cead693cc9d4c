"""Time-based one-time passwords (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps) and the
recovery codes that stand in for them when the authenticator is lost.

A verified code returns its time step: the caller stores it, and passes it back as
`last_step` next time, so a code (or an earlier one) cannot be used twice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
import time
from urllib.parse import quote, urlencode

DIGITS = 6
PERIOD = 30
SECRET_BYTES = 20  # 160 bits, the length of an HMAC-SHA1 key (RFC 4226)

RECOVERY_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lowercase
RECOVERY_GROUPS = 3
RECOVERY_GROUP_LENGTH = 4  # 3 groups of 4 base32 characters: 60 bits


def new_secret() -> str:
    """A new random 160-bit secret, base32 without padding (as authenticator apps take it)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    text = secret.replace(" ", "").upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def _code(key: bytes, step: int, digits: int) -> str:
    """HOTP (RFC 4226) of counter `step`."""
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    number = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10**digits).zfill(digits)


def time_step(at: float | None = None) -> int:
    """The step of time `at` (seconds since the epoch; now if None)."""
    return int((time.time() if at is None else at) // PERIOD)


def code_at(secret: str, at: float | None = None, *, digits: int = DIGITS) -> str:
    """The code an authenticator shows at time `at` (now if None)."""
    return _code(_key(secret), time_step(at), digits)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The `otpauth://` URI an authenticator app reads (from a QR code) to enrol `secret`.

    Neither `account` nor `issuer` may contain a colon: it separates them in the label.
    """
    if ":" in account or ":" in issuer:
        raise ValueError("the account and the issuer of a TOTP URI may not contain ':'")
    label = f"{quote(issuer, safe='')}:{quote(account, safe='')}"
    query = urlencode(
        {
            "secret": secret,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": PERIOD,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def verify(
    secret: str,
    code: str,
    *,
    at: float | None = None,
    last_step: int | None = None,
    window: int = 1,
    digits: int = DIGITS,
) -> int | None:
    """The time step whose code is `code`, within `window` steps either side of `at`'s (for
    clocks that drift), or None. Steps up to `last_step` are refused: a code is used once.

    `code` must be exactly `digits` ASCII digits once spaces are removed. Every candidate
    step is compared, in constant time, so the answer's timing tells nothing.
    """
    typed = code.replace(" ", "")
    if not re.fullmatch(rf"[0-9]{{{digits}}}", typed):
        return None
    key, now = _key(secret), time_step(at)
    used = -1 if last_step is None else last_step
    matched = None
    for step in range(now - window, now + window + 1):
        if hmac.compare_digest(_code(key, step, digits), typed) and step > used:
            matched = step if matched is None else matched
    return matched


def new_recovery_codes(n: int = 10) -> list[str]:
    """`n` new single-use recovery codes, like `abcd-efgh-ijkl` (60 random bits each)."""
    return [
        "-".join(
            "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_GROUP_LENGTH))
            for _ in range(RECOVERY_GROUPS)
        )
        for _ in range(n)
    ]


def normalize_recovery_code(code: str) -> str:
    """A recovery code as typed, lowercased, without its dashes and spaces."""
    return re.sub(r"[-\s]", "", code).lower()


def hash_recovery_code(code: str) -> str:
    """What to store of a recovery code: the SHA-256 (hex) of its normal form. A fast hash is
    right here: a code has 60 random bits, far too many to guess by trying hashes."""
    return hashlib.sha256(normalize_recovery_code(code).encode()).hexdigest()
