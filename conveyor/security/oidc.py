"""The OpenID Connect protocol of OIDC login: the configured providers, their discovery
documents, the authorization request (state, nonce, PKCE), the token request, and the
verification of the ID token that comes back.

Pure protocol: documents come in already fetched (`conveyor.http.oidc_fetch` fetches them), so
every rule here is tested without a network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

import jwt
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from conveyor.errors import AuthenticationError, ConfigurationError, ProviderResponseError

#: The setting that lists the providers, named in its errors.
PROVIDERS_SETTING = "CONVEYOR_OIDC_PROVIDERS"
PROVIDER_NAME = re.compile(r"[a-z0-9-]{1,32}")
#: The ID token algorithms accepted at all: asymmetric ones only (RFC 8725). An HMAC one would
#: make the client secret a signing key; `none` would sign nothing.
ACCEPTED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
#: Clock skew tolerated between the provider and us, on `exp`, `iat` and `nbf`.
LEEWAY_SECONDS = 60
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat")
_LOCAL_NAMES = frozenset({"localhost"})


class ProviderConfig(BaseModel):
    """One OpenID provider as configured: whom to trust (`issuer`) and who we are to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=PROVIDER_NAME.pattern)
    issuer: str
    client_id: str = Field(min_length=1)
    #: None for a public client, which proves itself with PKCE alone.
    client_secret: SecretStr | None = None
    scopes: str = "openid email profile"
    #: Whether a first login may link an existing account by the email address the provider
    #: verified. False: only new accounts (and those linked before) sign in with it.
    link_existing: bool = True

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, issuer: str) -> str:
        check_endpoint(issuer)
        if urlsplit(issuer).query or urlsplit(issuer).fragment:
            raise ValueError("an issuer has no ?query or #fragment")
        return issuer

    @field_validator("scopes")
    @classmethod
    def _asks_for_openid(cls, scopes: str) -> str:
        if "openid" not in scopes.split():
            raise ValueError("must include `openid`")
        return scopes


def parse_providers(text: str | None) -> dict[str, ProviderConfig]:
    """The providers of `CONVEYOR_OIDC_PROVIDERS`: a JSON object of name to `{"issuer": ...,
    "client_id": ..., "client_secret": ..., "scopes": ...}`. Unset or empty: none.
    ConfigurationError names the provider and field that are wrong."""
    if not text or not text.strip():
        return {}
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{PROVIDERS_SETTING} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"{PROVIDERS_SETTING} must be a JSON object of providers")
    providers = {}
    for name, entry in document.items():
        where = f"{PROVIDERS_SETTING}: provider {name!r}"
        if not PROVIDER_NAME.fullmatch(name):
            raise ConfigurationError(f"{where}: a name is 1 to 32 of a-z, 0-9 and -")
        if not isinstance(entry, dict):
            raise ConfigurationError(f"{where} must be a JSON object")
        try:
            providers[name] = ProviderConfig.model_validate({**entry, "name": name})
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            raise ConfigurationError(f"{where}, field {field!r}: {message}") from None
    return providers


def check_endpoint(url: str) -> str:
    """`url` if it is an https URL, or http to a loopback host (a test's local provider);
    ValueError otherwise. A login over plain http could be read or altered on the way."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"{url!r} is not an absolute URL")
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host)):
        return url
    raise ValueError(f"{url!r} must be https (plain http is accepted for loopback hosts only)")


def _is_loopback(host: str) -> bool:
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Discovery:
    """What a provider's `/.well-known/openid-configuration` says, checked."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    id_token_signing_alg_values_supported: tuple[str, ...]

    @classmethod
    def parse(cls, document: Any, provider: ProviderConfig) -> Discovery:
        """Check a fetched discovery document against `provider`. Its issuer must be the
        configured one exactly (OpenID Connect Discovery 4.3: otherwise another issuer could
        pass its tokens off); endpoints must be https (http on loopback)."""
        where = f"the discovery document of {provider.name!r}"
        if not isinstance(document, dict):
            raise ProviderResponseError(f"{where} is not a JSON object")
        if document.get("issuer") != provider.issuer:
            raise ProviderResponseError(
                f"{where} names the issuer {document.get('issuer')!r}, not the configured "
                f"{provider.issuer!r}"
            )
        endpoints = {}
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(field)
            if not isinstance(value, str):
                raise ProviderResponseError(f"{where} has no {field}")
            try:
                endpoints[field] = check_endpoint(value)
            except ValueError as exc:
                raise ProviderResponseError(f"{where}, {field}: {exc}") from None
        algorithms = document.get("id_token_signing_alg_values_supported", [])
        if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
            raise ProviderResponseError(
                f"{where}: id_token_signing_alg_values_supported is not a list of names"
            )
        return cls(
            issuer=provider.issuer,
            id_token_signing_alg_values_supported=tuple(algorithms),
            **endpoints,
        )

    @property
    def algorithms(self) -> frozenset[str]:
        """The ID token algorithms accepted from this provider: those it advertises that we
        accept at all."""
        return ACCEPTED_ALGORITHMS.intersection(self.id_token_signing_alg_values_supported)


@dataclass(frozen=True)
class LoginState:
    """What a login keeps between its start and the provider's callback (server side, never
    in the browser): `state` to match the callback, `nonce` to match the ID token, and the
    PKCE verifier that only this login can show the token endpoint."""

    provider: str
    state: str
    nonce: str
    verifier: str
    redirect_uri: str


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def begin(
    provider: ProviderConfig, discovery: Discovery, redirect_uri: str
) -> tuple[str, LoginState]:
    """Start a login: the URL to send the browser to, and the state to keep until the
    callback. `state` and `nonce` are 32 random bytes each; the PKCE verifier 64 characters."""
    login = LoginState(
        provider=provider.name,
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        verifier=secrets.token_urlsafe(48),
        redirect_uri=redirect_uri,
    )
    parameters = {
        "response_type": "code",
        "scope": provider.scopes,
        "client_id": provider.client_id,
        "redirect_uri": redirect_uri,
        "state": login.state,
        "nonce": login.nonce,
        "code_challenge": pkce_challenge(login.verifier),
        "code_challenge_method": "S256",
    }
    parts = urlsplit(discovery.authorization_endpoint)
    query = urlencode([*parse_qsl(parts.query), *parameters.items()])
    return urlunsplit(parts._replace(query=query)), login


def token_request(
    provider: ProviderConfig, discovery: Discovery, code: str, verifier: str, redirect_uri: str
) -> tuple[str, dict[str, str], dict[str, str]]:
    """The code exchange as (URL, form, headers). A client with a secret authenticates with
    HTTP Basic (`client_secret_basic`, each part form-encoded as RFC 6749 2.3.1 says); a public
    client names itself in the form."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    headers = {"Accept": "application/json"}
    if provider.client_secret is None:
        form["client_id"] = provider.client_id
    else:
        pair = f"{quote_plus(provider.client_id)}:"
        pair += quote_plus(provider.client_secret.get_secret_value())
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return discovery.token_endpoint, form, headers


def id_token_of(status: int, document: Any) -> str:
    """The ID token of a token endpoint's answer. An OAuth error (a used or unknown code, a
    wrong verifier) is the login's failure: AuthenticationError with the provider's reason."""
    if not isinstance(document, dict):
        raise ProviderResponseError(f"the token endpoint answered {status} without a JSON object")
    if status == 400 or "error" in document:
        reason = str(document.get("error", "refused"))
        if description := document.get("error_description"):
            reason += f": {description}"
        raise AuthenticationError(f"the provider refused the authorization code ({reason})")
    token = document.get("id_token")
    if status != 200 or not isinstance(token, str):
        raise ProviderResponseError(f"the token endpoint answered {status} without an id_token")
    return token


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in."""

    subject: str
    email: str | None
    email_verified: bool
    name: str | None

    def verified_email(self) -> str:
        """The email address, if the provider vouches for it (accounts are linked by it)."""
        if self.email is None or not self.email_verified:
            raise AuthenticationError("the provider has not verified this account's email address")
        return self.email


class UnknownSigningKeyError(AuthenticationError):
    """The ID token names a key the provider's key set does not hold (perhaps a new one)."""


def verify_id_token(
    id_token: str,
    *,
    provider: ProviderConfig,
    discovery: Discovery,
    jwks: Mapping[str, Any],
    nonce: str,
    now: float | None = None,
) -> Identity:
    """Check an ID token (OpenID Connect Core 3.1.3.7) and say whom it names: signed with an
    algorithm of `discovery.algorithms` by the key of its `kid` in `jwks`, issued by the
    provider's issuer to our client id, within its lifetime, carrying our nonce.
    AuthenticationError says what is wrong (UnknownSigningKeyError for an unknown `kid`)."""
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"the ID token is not a valid JWT: {exc}") from None
    algorithm = header.get("alg")
    if algorithm not in discovery.algorithms:
        accepted = ", ".join(sorted(discovery.algorithms)) or "none in common"
        raise AuthenticationError(
            f"the ID token is signed with {algorithm!r}; accepted: {accepted}"
        )
    key = signing_key(jwks, header.get("kid"), algorithm)
    try:
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key,
            algorithms=[algorithm],
            audience=provider.client_id,
            issuer=discovery.issuer,
            # The times are checked below, against `now` (PyJWT reads the clock itself).
            options={
                "require": list(REQUIRED_CLAIMS),
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise AuthenticationError("the ID token's signature does not verify") from None
    except jwt.InvalidAudienceError:
        raise AuthenticationError(
            f"the ID token was issued to another client (aud is not {provider.client_id!r})"
        ) from None
    except jwt.InvalidIssuerError:
        raise AuthenticationError(
            f"the ID token was issued by another issuer than {discovery.issuer!r}"
        ) from None
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"the ID token is refused: {exc}") from None
    _check_times(claims, time.time() if now is None else now)
    _check_party(claims, provider.client_id)
    if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
        raise AuthenticationError("the ID token's nonce is not the one of this login")
    return Identity(
        subject=str(claims["sub"]),
        email=claims["email"] if isinstance(claims.get("email"), str) else None,
        email_verified=claims.get("email_verified") in (True, "true"),
        name=claims["name"] if isinstance(claims.get("name"), str) else None,
    )


def signing_key(jwks: Mapping[str, Any], kid: object, algorithm: str) -> jwt.PyJWK:
    """The key of `jwks` named `kid` (without a `kid`: the set's only signing key), as a key
    of `algorithm`. A key meant for encryption or another algorithm is refused."""
    listed = jwks.get("keys")
    keys = [k for k in listed if isinstance(k, dict)] if isinstance(listed, list) else []
    keys = [k for k in keys if k.get("use", "sig") == "sig"]
    chosen = keys if kid is None else [k for k in keys if k.get("kid") == kid]
    if len(chosen) != 1:
        named = f"the key {kid!r}" if kid is not None else "no key id, and the set has several"
        raise UnknownSigningKeyError(f"the ID token names {named}, unknown to the provider")
    if chosen[0].get("alg", algorithm) != algorithm:
        raise AuthenticationError(f"the ID token's key {kid!r} is not an {algorithm} key")
    try:
        return jwt.PyJWK(chosen[0], algorithm=algorithm)
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"the key {kid!r} is not an {algorithm} key: {exc}") from None


def _check_times(claims: Mapping[str, Any], now: float) -> None:
    expires, issued, not_before = (_time(claims, name) for name in ("exp", "iat", "nbf"))
    if expires is None or now > expires + LEEWAY_SECONDS:
        raise AuthenticationError("the ID token has expired")
    if issued is None or issued > now + LEEWAY_SECONDS:
        raise AuthenticationError("the ID token was issued in the future (iat)")
    if not_before is not None and not_before > now + LEEWAY_SECONDS:
        raise AuthenticationError("the ID token is not valid yet (nbf)")


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationError(f"the ID token's {name} is not a number")
    return float(value)


def _check_party(claims: Mapping[str, Any], client_id: str) -> None:
    """With several audiences, the party the token was issued to (`azp`) must be us."""
    audience = claims["aud"]
    several = isinstance(audience, list) and len(audience) > 1
    if (several or "azp" in claims) and claims.get("azp") != client_id:
        raise AuthenticationError(
            f"the ID token was issued to another party (azp is not {client_id!r})"
        )
