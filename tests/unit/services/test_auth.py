"""Access tokens: what they carry, which keys and headers are accepted, a bounded lifetime
checked at verification as well as at issue, and key rotation."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from conveyor.errors import InvalidRequestError, InvalidTokenError
from conveyor.security.signing import KeySet, SigningKey
from conveyor.services.auth import Claims, TokenConfig, TokenVerifier, issue_token
from conveyor.settings import Settings

DAY = 24 * 3600
KEY = SigningKey.generate("EdDSA")
CONFIG = TokenConfig(
    keys=KeySet.of([KEY]),
    issuer="conveyor",
    audience="conveyor-api",
    ttl=dt.timedelta(minutes=15),
    max_lifetime=dt.timedelta(days=90),
)
USER = uuid.uuid4()


def forged(*, key: SigningKey = KEY, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """A token signed with `key`, with these claims and header fields over sound defaults
    (a value of None leaves the claim or header field out)."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": str(USER),
        "iss": CONFIG.issuer,
        "aud": CONFIG.audience,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    base.update(claims)
    headers = {"kid": key.kid, "typ": "at+jwt", **(header or {})}
    return jwt.encode(
        {k: v for k, v in base.items() if v is not None},
        key.private,
        algorithm=key.alg,
        headers={k: v for k, v in headers.items() if v is not None},
    )


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    """The signing input of a token with this header and these claims: no signature yet."""

    def part(value: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    return part(header) + b"." + part(claims)


def refused(token: str | bytes, config: TokenConfig = CONFIG) -> str:
    text = token if isinstance(token, str) else token.decode()
    with pytest.raises(InvalidTokenError) as caught:
        TokenVerifier(config).verify(text)
    return caught.value.detail


def test_an_issued_token_says_whose_it_is_and_how_they_logged_in() -> None:
    session = uuid.uuid4()
    token = issue_token(CONFIG, USER, session_id=session, amr=["pwd", "otp"])
    claims = TokenVerifier(CONFIG).verify(token)
    assert isinstance(claims, Claims)
    assert (claims.user_id, claims.session_id, claims.amr) == (USER, session, ("pwd", "otp"))
    assert claims.expires_at - claims.issued_at == dt.timedelta(minutes=15)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": KEY.kid, "typ": "at+jwt"}
    body = jwt.decode(token, options={"verify_signature": False})
    assert set(body) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "sid", "amr"}


def test_a_token_of_the_cli_has_no_session() -> None:
    claims = TokenVerifier(CONFIG).verify(issue_token(CONFIG, USER))
    assert (claims.session_id, claims.amr) == (None, ("cli",))


def test_an_rsa_key_signs_and_verifies_too() -> None:
    config = dataclasses.replace(CONFIG, keys=KeySet.of([SigningKey.generate("RS256")]))
    token = issue_token(config, USER)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert TokenVerifier(config).verify(token).user_id == USER


def test_a_forged_signature_is_refused() -> None:
    head, body, _ = forged().split(".")
    _, _, other = forged(key=SigningKey.generate()).split(".")
    assert "Signature verification failed" in refused(f"{head}.{body}.{other}")


def test_a_token_signed_by_another_key_under_this_kid_is_refused() -> None:
    impostor = SigningKey.generate()
    assert "Signature" in refused(forged(key=impostor, header={"kid": KEY.kid}))


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_an_unsigned_token_is_refused(alg: str) -> None:
    now = int(time.time())
    claims = {"sub": str(USER), "iss": "conveyor", "aud": "conveyor-api", "iat": now,
              "nbf": now, "exp": now + 60, "jti": "x"}  # fmt: skip
    token = unsigned({"alg": alg, "kid": KEY.kid, "typ": "at+jwt"}, claims) + b"."
    assert f"alg {alg!r} is not accepted" in refused(token)


def test_an_hs256_token_keyed_with_the_public_key_is_refused() -> None:
    # The classic confusion: the public key's bytes taken for an HMAC secret.
    public = KEY.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"sub": str(USER), "iss": "conveyor", "aud": "conveyor-api", "iat": now,
              "nbf": now, "exp": now + 60, "jti": "x"}  # fmt: skip
    header = {"alg": "HS256", "kid": KEY.kid, "typ": "at+jwt"}
    signing_input = unsigned(header, claims)
    mac = hmac.new(public, signing_input, hashlib.sha256).digest()
    token = signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")
    assert "alg 'HS256' is not accepted" in refused(token)


def test_an_rs256_token_for_an_eddsa_kid_is_refused() -> None:
    rsa_key = SigningKey.generate("RS256")
    assert "alg RS256 is not its key's (EdDSA)" in refused(
        forged(key=rsa_key, header={"kid": KEY.kid})
    )


def test_a_token_of_an_unknown_kid_is_refused() -> None:
    assert "unknown key" in refused(forged(key=SigningKey.generate()))


def test_a_token_without_a_kid_is_refused() -> None:
    token = forged(header={"kid": None})
    assert "kid" not in jwt.get_unverified_header(token)
    assert "names no signing key" in refused(token)


@pytest.mark.parametrize("typ", [None, "JWT", "id_token+jwt"])
def test_a_token_that_is_not_an_access_token_is_refused(typ: str | None) -> None:
    assert "typ must be at+jwt" in refused(forged(header={"typ": typ}))


def test_the_media_type_form_of_the_access_token_typ_is_accepted() -> None:
    token = forged(header={"typ": "application/at+jwt"})
    assert TokenVerifier(CONFIG).verify(token).user_id == USER


#: Claims that are times, given in the cases below as seconds from when the test runs (not
#: from when the cases were collected, which may be many minutes earlier).
TIMES = ("exp", "nbf", "iat")


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"iss": "someone-else"}, "issuer"),
        ({"aud": "another-api"}, "Audience"),
        ({"exp": -60}, "expired"),
        ({"nbf": 600}, "not yet valid"),
        ({"iat": 600}, "not yet valid"),
    ],
    ids=["wrong iss", "wrong aud", "expired", "nbf in the future", "iat in the future"],
)
def test_a_token_not_valid_here_or_now_is_refused(claims: dict[str, Any], why: str) -> None:
    now = int(time.time())
    claims = {k: now + v if k in TIMES else v for k, v in claims.items()}
    assert why in refused(forged(**claims))


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"])
def test_a_token_without_a_required_claim_is_refused(claim: str) -> None:
    assert claim in refused(forged(**{claim: None}))


@pytest.mark.parametrize(
    "claims",
    [{"sub": "not-a-uuid"}, {"sid": "not-a-uuid"}, {"amr": "pwd"}, {"amr": [1]}],
    ids=["sub", "sid", "amr string", "amr of numbers"],
)
def test_malformed_subject_session_or_methods_are_refused(claims: dict[str, Any]) -> None:
    refused(forged(**claims))


def test_rotation_keeps_tokens_of_the_old_key_until_it_is_removed() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    before = dataclasses.replace(CONFIG, keys=KeySet.of([old]))
    token = issue_token(before, USER)
    # The new key signs; the old one stays, public only, while its tokens live.
    retired = SigningKey(old.public)
    during = dataclasses.replace(CONFIG, keys=KeySet.of([new, retired]))
    assert TokenVerifier(during).verify(token).user_id == USER
    assert jwt.get_unverified_header(issue_token(during, USER))["kid"] == new.kid
    after = dataclasses.replace(CONFIG, keys=KeySet.of([new]))
    assert "unknown key" in refused(token, after)


def test_verified_tokens_are_remembered() -> None:
    verifier = TokenVerifier(CONFIG)
    token = issue_token(CONFIG, USER)
    first = verifier.verify(token)
    verifier.config = dataclasses.replace(CONFIG, keys=KeySet.of([SigningKey.generate()]))
    assert verifier.verify(token) is first  # no second signature check


def test_a_token_within_the_maximum_lifetime_is_accepted() -> None:
    now = int(time.time())
    assert TokenVerifier(CONFIG).verify(forged(exp=now + 90 * DAY)).user_id == USER


def test_a_token_that_expires_in_the_year_9999_is_refused() -> None:
    assert "lives longer" in refused(forged(exp=253402300799))


def test_a_token_whose_exp_is_too_far_after_its_iat_is_refused() -> None:
    # Issued long ago with a long life that has not run out yet: exp - iat is too long.
    now = int(time.time())
    assert "lives longer" in refused(
        forged(iat=now - 60 * DAY, nbf=now - 60 * DAY, exp=now + 60 * DAY)
    )


@pytest.mark.parametrize(
    "claims",
    [{"iat": True}, {"iat": "1700000000"}, {"exp": str(int(time.time()) + 60)}],
    ids=["boolean iat", "string iat", "string exp"],
)
def test_times_that_are_not_numbers_are_refused(claims: dict[str, Any]) -> None:
    refused(forged(**claims))


def test_issuing_a_token_longer_than_the_maximum_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS"):
        issue_token(CONFIG, USER, ttl=dt.timedelta(days=91))


def test_settings_refuse_a_ttl_longer_than_the_maximum_lifetime() -> None:
    with pytest.raises(ValidationError, match="CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS"):
        Settings(_env_file=None, token_ttl_seconds=100, token_max_lifetime_seconds=99)  # type: ignore[call-arg]


def test_access_tokens_live_15_minutes_by_default() -> None:
    settings = Settings(_env_file=None, secret_key="s" * 48)  # type: ignore[call-arg]
    assert TokenConfig.of(settings).ttl == dt.timedelta(minutes=15)


def test_the_secret_key_alone_gives_every_process_the_same_signing_key() -> None:
    settings = Settings(_env_file=None, secret_key="s" * 48)  # type: ignore[call-arg]
    token = issue_token(TokenConfig.of(settings), USER)
    assert TokenVerifier(TokenConfig.of(settings)).verify(token).user_id == USER


def test_key_files_are_read_from_the_settings(tmp_path: Path) -> None:
    new, old = SigningKey.generate(), SigningKey.generate("RS256")
    (tmp_path / "new.pem").write_bytes(new.private_pem())
    (tmp_path / "old.pub").write_bytes(
        old.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        jwt_private_keys=f"{tmp_path / 'new.pem'}",
        jwt_public_keys=f" {tmp_path / 'old.pub'} , ",
    )
    keys = TokenConfig.of(settings).keys
    assert [key.kid for key in keys.keys] == [new.kid, old.kid]
