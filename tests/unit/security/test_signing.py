"""Signing keys: their kid, the key that signs, loading from PEM, derivation and the JWK Set."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conveyor.errors import ConfigurationError
from conveyor.security.signing import KeySet, SigningKey

SECRET = "a-secret-key-that-is-long-enough-for-everyone"


def public_pem(key: SigningKey) -> bytes:
    return key.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_the_kid_of_an_rsa_key_is_its_rfc_7638_thumbprint() -> None:
    # RFC 7638 section 3.1: the example key and its thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    n_bytes = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    numbers = rsa.RSAPublicNumbers(65537, int.from_bytes(n_bytes, "big"))
    key = SigningKey.of(numbers.public_key())
    assert key.kid == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert key.alg == "RS256"


def test_the_kid_of_an_ed25519_key_is_the_thumbprint_of_its_jwk() -> None:
    key = SigningKey.generate("EdDSA")
    jwk = key.jwk()
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": jwk["x"]}, separators=(",", ":"))
    digest = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=")
    assert key.kid == digest.decode()
    assert jwk == {**jwk, "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig"}


def test_the_first_private_key_signs_and_every_key_verifies(tmp_path: Path) -> None:
    new, old, retired = (SigningKey.generate() for _ in range(3))
    (tmp_path / "new.pem").write_bytes(new.private_pem())
    (tmp_path / "old.pem").write_bytes(old.private_pem())
    (tmp_path / "retired.pub").write_bytes(public_pem(retired))
    keys = KeySet.load(
        [tmp_path / "new.pem", tmp_path / "old.pem"], [tmp_path / "retired.pub"], None
    )
    assert keys.signer.kid == new.kid
    assert [key.kid for key in keys.keys] == [new.kid, old.kid, retired.kid]
    assert keys.get(retired.kid) is not None and keys.get(retired.kid).private is None  # type: ignore[union-attr]


def test_a_key_listed_as_private_and_public_keeps_its_private_half(tmp_path: Path) -> None:
    key = SigningKey.generate()
    (tmp_path / "key.pem").write_bytes(key.private_pem())
    (tmp_path / "key.pub").write_bytes(public_pem(key))
    keys = KeySet.load([tmp_path / "key.pem"], [tmp_path / "key.pub"], None)
    assert len(keys.keys) == 1 and keys.signer.private is not None


def test_without_private_keys_the_key_derived_from_the_secret_signs() -> None:
    keys = KeySet.load([], [], SECRET)
    assert keys.signer.alg == "EdDSA"
    assert keys.signer.kid == SigningKey.derived(SECRET).kid
    assert keys.signer.kid != SigningKey.derived(SECRET + "x").kid


def test_the_derived_key_is_the_same_in_another_process() -> None:
    code = (
        "from conveyor.security.signing import SigningKey; "
        f"print(SigningKey.derived({SECRET!r}).kid)"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert other.stdout.strip() == SigningKey.derived(SECRET).kid


def test_with_private_keys_the_secret_derives_no_key(tmp_path: Path) -> None:
    key = SigningKey.generate()
    (tmp_path / "key.pem").write_bytes(key.private_pem())
    keys = KeySet.load([tmp_path / "key.pem"], [], SECRET)
    assert keys.get(SigningKey.derived(SECRET).kid) is None


def test_a_set_without_a_private_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key.pub").write_bytes(public_pem(SigningKey.generate()))
    with pytest.raises(ConfigurationError, match="no private key"):
        KeySet.load([], [tmp_path / "key.pub"], None)


def test_an_rsa_key_under_2048_bits_is_refused(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "small.pem"
    path.write_bytes(
        small.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigurationError, match=r"small.pem: an RSA key of 1024 bits"):
        SigningKey.load(path, private=True)


def test_a_key_of_another_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigurationError, match="Ed25519 or RSA"):
        SigningKey.load(path, private=True)


@pytest.mark.parametrize("content", [None, b"not a key", b""], ids=["missing", "junk", "empty"])
def test_an_unreadable_key_file_is_refused_naming_it(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigurationError, match=r"key.pem is not a readable PEM private key"):
        SigningKey.load(path, private=True)


def test_a_private_key_is_not_taken_for_a_public_one(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(SigningKey.generate().private_pem())
    with pytest.raises(ConfigurationError, match="not a readable PEM public key"):
        SigningKey.load(path, private=False)


@pytest.mark.parametrize("alg", ["EdDSA", "RS256"])
def test_a_token_verifies_with_the_jwks_entry_of_its_kid(alg: str) -> None:
    signer = SigningKey.generate(alg)  # type: ignore[arg-type]
    keys = KeySet.of([signer, SigningKey.generate("RS256")])
    token = signer.sign({"sub": "someone"}, "at+jwt")
    document = json.loads(json.dumps(keys.jwks()))  # as served
    assert all("d" not in jwk and "p" not in jwk for jwk in document["keys"])
    kid = jwt.get_unverified_header(token)["kid"]
    (entry,) = (jwk for jwk in document["keys"] if jwk["kid"] == kid)
    public = jwt.PyJWK(entry)
    assert public.algorithm_name == alg
    assert jwt.decode(token, public, algorithms=[alg]) == {"sub": "someone"}


def test_a_generated_key_loads_back_with_the_same_kid(tmp_path: Path) -> None:
    key = SigningKey.generate("RS256")
    path = tmp_path / "key.pem"
    path.write_bytes(key.private_pem())
    loaded = SigningKey.load(path, private=True)
    assert (loaded.kid, loaded.alg) == (key.kid, "RS256")
