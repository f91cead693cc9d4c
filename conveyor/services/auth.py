"""API access tokens: JWTs signed by the deployment's asymmetric keys (RFC 9068 `at+jwt`),
each key pinned to its algorithm, with checked issuer, audience and a bounded lifetime."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from conveyor.errors import ConfigurationError, InvalidRequestError, InvalidTokenError
from conveyor.security.signing import ALGORITHMS, KeySet, SigningKey
from conveyor.settings import SECRET_KEY_HINT, Settings

#: The header `typ` of access tokens (RFC 9068 section 2.1); a token of another type (an ID
#: token, a token of another protocol signed by the same key) is refused.
TOKEN_TYPE = "at+jwt"
TOKEN_TYPES = frozenset({TOKEN_TYPE, f"application/{TOKEN_TYPE}"})
#: Every access token has these claims; one without any of them is refused.
REQUIRED_CLAIMS = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti")
#: Seconds of clock difference forgiven between the issuer and the verifier.
LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class TokenConfig:
    keys: KeySet
    issuer: str
    audience: str
    ttl: dt.timedelta
    #: The longest lifetime a token may claim (`exp` after `iat`) and have left (`exp` after now).
    max_lifetime: dt.timedelta

    @classmethod
    def of(cls, settings: Settings) -> TokenConfig:
        """The token settings, keys loaded; ConfigurationError without a key to sign with, or
        for a key file that cannot be used."""
        secret = settings.secret_key
        if not settings.jwt_private_keys and secret is None:
            raise ConfigurationError(
                "CONVEYOR_SECRET_KEY is not set (nor CONVEYOR_JWT_PRIVATE_KEYS): it signs the "
                f"API tokens; {SECRET_KEY_HINT}"
            )
        keys = KeySet.load(
            settings.jwt_private_keys,
            settings.jwt_public_keys,
            None if secret is None else secret.get_secret_value(),
        )
        return cls(
            keys=keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl=dt.timedelta(seconds=settings.token_ttl_seconds),
            max_lifetime=dt.timedelta(seconds=settings.token_max_lifetime_seconds),
        )


@dataclass(frozen=True)
class Claims:
    """What a verified access token says: whose it is, of which login session (if any), how
    they authenticated (RFC 8176 `amr` values) and when it was issued and expires."""

    user_id: uuid.UUID
    session_id: uuid.UUID | None
    amr: tuple[str, ...]
    issued_at: dt.datetime
    expires_at: dt.datetime


def issue_token(
    config: TokenConfig,
    user_id: uuid.UUID,
    *,
    ttl: dt.timedelta | None = None,
    session_id: uuid.UUID | None = None,
    amr: Sequence[str] = ("cli",),
) -> str:
    """An access token for the user, signed by the first key; InvalidRequestError for a
    lifetime longer than `config.max_lifetime` (such a token would be refused)."""
    ttl = config.ttl if ttl is None else ttl
    if ttl > config.max_lifetime:
        raise InvalidRequestError(
            f"a token may live at most {config.max_lifetime.total_seconds():g} seconds "
            "(CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS)"
        )
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, Any] = {
        "iss": config.issuer,
        "aud": config.audience,
        "sub": str(user_id),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "amr": list(amr),
    }
    if session_id is not None:
        claims["sid"] = str(session_id)
    return config.keys.signer.sign(claims, TOKEN_TYPE)


class TokenVerifier:
    """Verifies tokens, with memory: a token already verified is trusted, without checking
    its signature again, until its expiry or for `ttl` seconds, whichever comes first."""

    def __init__(self, config: TokenConfig, *, ttl: float = 60.0, max_entries: int = 10_000):
        self.config = config
        self.ttl = ttl
        self.max_entries = max_entries
        self._verified: dict[str, tuple[Claims, float]] = {}

    def verify(self, token: str) -> Claims:
        """What a valid token says; InvalidTokenError, saying why, otherwise."""
        now = time.time()
        hit = self._verified.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        claims = decode(self.config, token)
        if len(self._verified) >= self.max_entries:
            self._verified.clear()
        self._verified[token] = (claims, min(claims.expires_at.timestamp(), now + self.ttl))
        return claims


def decode(config: TokenConfig, token: str) -> Claims:
    """The claims of a token signed by one of `config.keys`, with that key's algorithm;
    InvalidTokenError, saying why, otherwise."""
    key = _key_of(config.keys, token)
    try:
        claims = jwt.decode(
            token,
            key.public,
            algorithms=[key.alg],
            issuer=config.issuer,
            audience=config.audience,
            options={"require": list(REQUIRED_CLAIMS)},
            leeway=LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise InvalidTokenError("the token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise InvalidTokenError(f"invalid token: {exc}") from None
    return _claims(config, claims)


def _key_of(keys: KeySet, token: str) -> SigningKey:
    """The key named by the token's `kid`, if the header's `alg` is that key's own and its
    `typ` is an access token's."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise InvalidTokenError(f"invalid token: {exc}") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise InvalidTokenError(
            f"invalid token: alg {alg!r} is not accepted (only {', '.join(ALGORITHMS)})"
        )
    if not isinstance(kid, str) or not kid:
        raise InvalidTokenError("invalid token: its header names no signing key (kid)")
    key = keys.get(kid)
    if key is None:
        raise InvalidTokenError(f"invalid token: signed by an unknown key (kid {kid[:64]!r})")
    if alg != key.alg:
        raise InvalidTokenError(f"invalid token: alg {alg} is not its key's ({key.alg})")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in TOKEN_TYPES:
        raise InvalidTokenError(f"invalid token: typ must be {TOKEN_TYPE}, not {typ!r}")
    return key


def _claims(config: TokenConfig, claims: dict[str, Any]) -> Claims:
    # PyJWT checked that `exp` is in the future and `iat` and `nbf` are not, but takes "123"
    # and true.
    times = claims["exp"], claims["iat"], claims["nbf"]
    if not all(type(value) in (int, float) for value in times):
        raise InvalidTokenError("invalid token: exp, iat and nbf must be numbers")
    expires, issued, _ = times
    limit = config.max_lifetime.total_seconds()
    if expires - issued > limit or expires - time.time() > limit + LEEWAY_SECONDS:
        raise InvalidTokenError(
            f"the token lives longer than this deployment accepts ({limit:g} seconds)"
        )
    amr, sid = claims.get("amr", []), claims.get("sid")
    if not isinstance(amr, list) or not all(isinstance(method, str) for method in amr):
        raise InvalidTokenError("invalid token: amr must be a list of strings")
    try:
        user_id = uuid.UUID(claims["sub"])
        session_id = None if sid is None else uuid.UUID(sid)
    except (TypeError, ValueError):
        raise InvalidTokenError("invalid token: sub and sid must be uuids") from None
    return Claims(
        user_id=user_id,
        session_id=session_id,
        amr=tuple(amr),
        issued_at=dt.datetime.fromtimestamp(issued, dt.UTC),
        expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
    )
