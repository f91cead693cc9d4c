"""TOTP against RFC 6238's test vectors, replay refusal, enrolment URIs and recovery codes."""

from __future__ import annotations

import base64
import re
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from conveyor.security.totp import (
    code_at,
    hash_recovery_code,
    new_recovery_codes,
    new_secret,
    normalize_recovery_code,
    provisioning_uri,
    time_step,
    verify,
)

#: RFC 6238 appendix B's SHA1 key, "12345678901234567890", as base32.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_codes_match_the_rfc_6238_sha1_vectors(at: int, expected: str) -> None:
    assert code_at(RFC_SECRET, at, digits=8) == expected
    assert verify(RFC_SECRET, expected, at=at, digits=8, window=0) == at // 30


def test_new_secrets_are_160_bits_of_unpadded_base32() -> None:
    secret = new_secret()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    assert len(base64.b32decode(secret)) == 20
    assert new_secret() != secret


def test_a_code_verifies_within_one_step_of_drift_and_not_beyond() -> None:
    secret = new_secret()
    step = time_step(NOW)
    for drift in (-1, 0, 1):
        code = code_at(secret, NOW + 30 * drift)
        assert verify(secret, code, at=NOW) == step + drift
    assert verify(secret, code_at(secret, NOW - 60), at=NOW) is None
    assert verify(secret, code_at(secret, NOW + 60), at=NOW) is None
    assert verify(secret, code_at(secret, NOW - 60), at=NOW, window=2) == step - 2


def test_a_used_code_or_an_older_one_cannot_be_used_again() -> None:
    secret = new_secret()
    code = code_at(secret, NOW)
    step = verify(secret, code, at=NOW)
    assert step is not None
    assert verify(secret, code, at=NOW, last_step=step) is None
    assert verify(secret, code_at(secret, NOW - 30), at=NOW, last_step=step) is None
    assert verify(secret, code_at(secret, NOW + 30), at=NOW, last_step=step) == step + 1


def test_spaces_are_ignored_but_anything_else_is_refused() -> None:
    secret = new_secret()
    code = code_at(secret, NOW)
    assert verify(secret, f" {code[:3]} {code[3:]} ", at=NOW) is not None
    for typed in (code[:5], code + "0", code[:5] + "x", "\u0661" * 6, f"{code[:3]}-{code[3:]}"):
        assert verify(secret, typed, at=NOW) is None


def test_a_wrong_code_is_refused() -> None:
    secret = new_secret()
    code = code_at(secret, NOW)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert verify(secret, wrong, at=NOW, window=0) is None


def test_the_provisioning_uri_names_issuer_account_and_parameters_quoted() -> None:
    uri = provisioning_uri("JBSWY3DPEHPK3PXP", "ada+jobs@example.com", "Conveyor & Co")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert parts.path == "/Conveyor%20%26%20Co:ada%2Bjobs%40example.com"
    assert unquote(parts.path) == "/Conveyor & Co:ada+jobs@example.com"
    assert parse_qs(parts.query) == {
        "secret": ["JBSWY3DPEHPK3PXP"],
        "issuer": ["Conveyor & Co"],
        "algorithm": ["SHA1"],
        "digits": ["6"],
        "period": ["30"],
    }


def test_a_colon_in_the_label_is_refused() -> None:
    with pytest.raises(ValueError, match="':'"):
        provisioning_uri("JBSWY3DPEHPK3PXP", "ada@example.com", "Conveyor: prod")


def test_recovery_codes_are_readable_random_and_distinct() -> None:
    codes = new_recovery_codes()
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(re.fullmatch(r"[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}", code) for code in codes)
    assert len(new_recovery_codes(3)) == 3


def test_recovery_codes_hash_the_same_however_they_are_typed() -> None:
    code = "abcd-efgh-ijkl"
    assert normalize_recovery_code(" ABCD efgh-IJKL ") == "abcdefghijkl"
    digest = hash_recovery_code(code)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert hash_recovery_code("ABCD EFGH IJKL") == digest
    assert hash_recovery_code("abcdefghijkm") != digest
