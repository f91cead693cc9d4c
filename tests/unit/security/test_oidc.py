"""The OpenID Connect protocol without a network: provider settings, discovery checks, the
authorization and token requests, and ID token verification."""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conveyor.errors import AuthenticationError, ConfigurationError, ProviderResponseError
from conveyor.security.oidc import (
    Discovery,
    ProviderConfig,
    UnknownSigningKeyError,
    begin,
    check_endpoint,
    id_token_of,
    parse_providers,
    pkce_challenge,
    token_request,
    verify_id_token,
)

ISSUER = "https://id.example.com"
PROVIDER = ProviderConfig(name="acme", issuer=ISSUER, client_id="conveyor")
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {
    "keys": [
        {
            **jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True),
            "kid": "k1",
            "use": "sig",
        }
    ]
}
NOW = 1_700_000_000.0


def discovery(**changes: Any) -> Discovery:
    document = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize?prompt=login",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "id_token_signing_alg_values_supported": ["RS256", "HS256"],
        **changes,
    }
    return Discovery.parse(document, PROVIDER)


def id_token(
    key: Any = KEY, algorithm: str = "RS256", kid: str | None = "k1", **claims: Any
) -> str:
    body = {
        "iss": ISSUER,
        "sub": "u1",
        "aud": "conveyor",
        "iat": NOW,
        "exp": NOW + 300,
        "nonce": "n",
        "email": "ada@example.com",
        "email_verified": "true",
        **claims,
    }
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm, headers)


def verify(token: str, jwks: Any = JWKS, now: float = NOW) -> Any:
    return verify_id_token(
        token, provider=PROVIDER, discovery=discovery(), jwks=jwks, nonce="n", now=now
    )


# --- settings ---------------------------------------------------------------------------


def test_providers_are_read_from_a_json_object() -> None:
    providers = parse_providers(
        '{"acme": {"issuer": "https://id.example.com", "client_id": "c", "client_secret": "s"},'
        ' "local-1": {"issuer": "http://127.0.0.1:8080", "client_id": "d", "scopes": "openid",'
        ' "link_existing": false}}'
    )
    assert providers["acme"].client_secret is not None
    assert providers["acme"].client_secret.get_secret_value() == "s"
    assert providers["acme"].scopes == "openid email profile"
    assert providers["local-1"].client_secret is None
    assert providers["acme"].link_existing and not providers["local-1"].link_existing
    assert parse_providers("") == {} and parse_providers(None) == {}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{nope", "CONVEYOR_OIDC_PROVIDERS is not JSON"),
        ("[]", "must be a JSON object of providers"),
        ('{"Acme": {}}', "provider 'Acme': a name is 1 to 32"),
        ('{"acme": 1}', "provider 'acme' must be a JSON object"),
        ('{"acme": {"issuer": "https://a.b"}}', "provider 'acme', field 'client_id'"),
        ('{"acme": {"issuer": "http://a.b", "client_id": "c"}}', "field 'issuer': .* https"),
        ('{"acme": {"issuer": "https://a.b", "client_id": "c", "x": 1}}', "field 'x'"),
        ('{"acme": {"issuer": "https://a.b", "client_id": "c", "scopes": "email"}}', "openid"),
    ],
)
def test_a_bad_provider_setting_names_the_provider_and_field(text: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        parse_providers(text)


@pytest.mark.parametrize(
    "url", ["https://a.example", "http://127.0.0.1:9000/x", "http://localhost/", "http://[::1]/"]
)
def test_endpoints_are_https_or_loopback(url: str) -> None:
    assert check_endpoint(url) == url


@pytest.mark.parametrize("url", ["http://a.example", "ftp://a.example", "/relative"])
def test_other_endpoints_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"https|absolute"):
        check_endpoint(url)


# --- discovery --------------------------------------------------------------------------


def test_discovery_accepts_only_asymmetric_algorithms_the_provider_advertises() -> None:
    assert discovery().algorithms == {"RS256"}
    assert discovery(id_token_signing_alg_values_supported=["HS256", "none"]).algorithms == set()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"issuer": ISSUER + "/"}, "not the configured"),
        ({"token_endpoint": None}, "has no token_endpoint"),
        ({"jwks_uri": "http://id.example.com/jwks"}, "jwks_uri: .* must be https"),
        ({"id_token_signing_alg_values_supported": "RS256"}, "not a list"),
    ],
)
def test_a_bad_discovery_document_is_refused(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(ProviderResponseError, match=reason):
        discovery(**changes)


# --- the requests -----------------------------------------------------------------------


def test_pkce_challenge_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_begin_builds_the_authorization_url_with_state_nonce_and_pkce() -> None:
    url, login = begin(PROVIDER, discovery(), "https://jobs.example.com/cb")
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{ISSUER}/authorize"
    assert query == {
        "prompt": "login",
        "response_type": "code",
        "scope": "openid email profile",
        "client_id": "conveyor",
        "redirect_uri": "https://jobs.example.com/cb",
        "state": login.state,
        "nonce": login.nonce,
        "code_challenge": pkce_challenge(login.verifier),
        "code_challenge_method": "S256",
    }
    assert len(base64.urlsafe_b64decode(login.state + "=")) == 32
    assert 43 <= len(login.verifier) <= 128
    _, again = begin(PROVIDER, discovery(), "https://jobs.example.com/cb")
    assert {again.state, again.nonce, again.verifier}.isdisjoint({login.state, login.nonce})


def test_a_confidential_client_authenticates_with_http_basic() -> None:
    provider = ProviderConfig.model_validate({**PROVIDER.model_dump(), "client_secret": "p@ss:w"})
    url, form, headers = token_request(provider, discovery(), "code", "verifier", "https://cb")
    assert url == f"{ISSUER}/token"
    assert form == {
        "grant_type": "authorization_code",
        "code": "code",
        "redirect_uri": "https://cb",
        "code_verifier": "verifier",
    }
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"conveyor:p%40ss%3Aw").decode()


def test_a_public_client_names_itself_in_the_form() -> None:
    _, form, headers = token_request(PROVIDER, discovery(), "code", "verifier", "https://cb")
    assert form["client_id"] == "conveyor" and "Authorization" not in headers


def test_the_token_answer_gives_the_id_token_or_the_provider_s_refusal() -> None:
    assert id_token_of(200, {"id_token": "t", "access_token": "a"}) == "t"
    with pytest.raises(AuthenticationError, match=r"invalid_grant: used"):
        id_token_of(400, {"error": "invalid_grant", "error_description": "used"})
    with pytest.raises(ProviderResponseError, match="without an id_token"):
        id_token_of(200, {"access_token": "a"})
    with pytest.raises(ProviderResponseError, match="without a JSON object"):
        id_token_of(200, ["id_token"])


# --- the ID token -----------------------------------------------------------------------


def test_a_good_id_token_names_the_user() -> None:
    identity = verify(id_token(name="Ada"))
    assert (identity.subject, identity.email, identity.email_verified, identity.name) == (
        "u1",
        "ada@example.com",
        True,
        "Ada",
    )


def test_a_key_set_with_one_key_verifies_a_token_without_kid() -> None:
    assert verify(id_token(kid=None)).subject == "u1"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (id_token(key=None, algorithm="none"), "signed with 'none'"),
        (id_token(key="k" * 32, algorithm="HS256"), "signed with 'HS256'"),
        (id_token(kid="k2"), "names the key 'k2', unknown"),
        (id_token(key=rsa.generate_private_key(65537, 2048)), "signature does not verify"),
        (id_token(iss="https://evil.example.com"), "another issuer"),
        (id_token(aud="someone"), "another client"),
        (id_token(aud=["conveyor", "other"]), r"another party \(azp"),
        (id_token(aud=["conveyor", "other"], azp="other"), r"another party \(azp"),
        (id_token(azp="other"), r"another party \(azp"),
        (id_token(nonce="m"), "nonce is not the one"),
        (id_token(nonce=None), "nonce is not the one"),
        (id_token(exp=NOW - 61), "has expired"),
        (id_token(iat=NOW + 61), "issued in the future"),
        (id_token(nbf=NOW + 61), "not valid yet"),
        (id_token(exp=None), 'missing the "exp" claim'),
        (id_token(sub=None), 'missing the "sub" claim'),
        (id_token(exp="soon"), "exp"),
        ("not.a.jwt", "not a valid JWT"),
    ],
)
def test_a_bad_id_token_is_refused_with_its_reason(token: str, reason: str) -> None:
    with pytest.raises(AuthenticationError, match=reason):
        verify(token)


def test_small_clock_skew_is_tolerated() -> None:
    assert verify(id_token(exp=NOW - 30, iat=NOW + 30, nbf=NOW + 30)).subject == "u1"


def test_several_audiences_need_us_as_authorized_party() -> None:
    assert verify(id_token(aud=["conveyor", "other"], azp="conveyor")).subject == "u1"


def test_an_unknown_kid_is_its_own_error_so_keys_can_be_fetched_again() -> None:
    with pytest.raises(UnknownSigningKeyError):
        verify(id_token(kid="new"))


def test_a_key_of_another_type_than_the_algorithm_is_refused() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "k1"}
    with pytest.raises(AuthenticationError, match="not an RS256 key"):
        verify(id_token(), jwks={"keys": [jwk]})


def test_an_encryption_key_does_not_verify_signatures() -> None:
    jwks = {"keys": [{**JWKS["keys"][0], "use": "enc"}]}
    with pytest.raises(UnknownSigningKeyError):
        verify(id_token(), jwks=jwks)


def test_verification_reads_the_clock_when_not_given_a_time() -> None:
    token = id_token(iat=time.time(), exp=time.time() + 60)
    assert verify_id_token(
        token, provider=PROVIDER, discovery=discovery(), jwks=JWKS, nonce="n"
    ).email_verified
