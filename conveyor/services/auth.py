"""API tokens: HS256 JWTs with pinned algorithm, issuer, audience and a bounded lifetime."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass

import jwt

from conveyor.errors import AuthenticationError, ConfigurationError, InvalidRequestError
from conveyor.settings import SECRET_KEY_HINT, Settings

ALGORITHM = "HS256"
#: Seconds of clock difference forgiven between the issuer and the verifier.
LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class TokenConfig:
    secret: str
    issuer: str
    audience: str
    ttl: dt.timedelta
    #: The longest lifetime a token may claim (`exp` after `iat`) and have left (`exp` after now).
    max_lifetime: dt.timedelta

    @classmethod
    def of(cls, settings: Settings) -> TokenConfig:
        """The token settings; ConfigurationError without a secret key."""
        if settings.secret_key is None:
            raise ConfigurationError(
                f"CONVEYOR_SECRET_KEY is not set: it signs the API tokens; {SECRET_KEY_HINT}"
            )
        return cls(
            secret=settings.secret_key.get_secret_value(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl=dt.timedelta(seconds=settings.token_ttl_seconds),
            max_lifetime=dt.timedelta(seconds=settings.token_max_lifetime_seconds),
        )


def issue_token(config: TokenConfig, user_id: uuid.UUID, *, ttl: dt.timedelta | None = None) -> str:
    """A signed bearer token for the user; InvalidRequestError for a lifetime longer than
    `config.max_lifetime` (such a token would be refused)."""
    ttl = config.ttl if ttl is None else ttl
    if ttl > config.max_lifetime:
        raise InvalidRequestError(
            f"a token may live at most {config.max_lifetime.total_seconds():g} seconds "
            "(CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS)"
        )
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(user_id),
        "iss": config.issuer,
        "aud": config.audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, config.secret, algorithm=ALGORITHM)


@dataclass(frozen=True)
class Claims:
    """What a verified access token says."""

    user_id: uuid.UUID
    #: The sign-in session it belongs to (None: a token from `conveyor tokens issue`).
    session_id: uuid.UUID | None
    #: How its holder signed in (RFC 8176): `pwd`, `otp`, ...; `cli` for issued tokens.
    amr: tuple[str, ...]
    issued_at: float
    expires_at: float


class TokenVerifier:
    """Verifies tokens, with memory: a token already verified is trusted, without checking
    its signature again, until its expiry or for `ttl` seconds, whichever comes first."""

    def __init__(self, config: TokenConfig, *, ttl: float = 60.0, max_entries: int = 10_000):
        self.config = config
        self.ttl = ttl
        self.max_entries = max_entries
        self._verified: dict[str, tuple[Claims, float]] = {}

    def verify(self, token: str) -> Claims:
        """What a valid token says; AuthenticationError otherwise."""
        now = time.time()
        hit = self._verified.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        claims = _decode(self.config, token)
        if len(self._verified) >= self.max_entries:
            self._verified.clear()
        self._verified[token] = (claims, min(claims.expires_at, now + self.ttl))
        return claims


def _decode(config: TokenConfig, token: str) -> Claims:
    try:
        claims = jwt.decode(
            token,
            config.secret,
            algorithms=[ALGORITHM],
            issuer=config.issuer,
            audience=config.audience,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            leeway=LEEWAY_SECONDS,
        )
        user_id = uuid.UUID(claims["sub"])
    except jwt.ExpiredSignatureError:
        raise AuthenticationError("the token has expired") from None
    except (jwt.InvalidTokenError, ValueError) as exc:
        raise AuthenticationError(f"invalid token: {exc}") from None
    # PyJWT checked that `exp` is in the future and `iat` is not, but takes "123" and true.
    expires, issued = claims["exp"], claims["iat"]
    if not all(type(value) in (int, float) for value in (expires, issued)):
        raise AuthenticationError("invalid token: exp and iat must be numbers")
    limit = config.max_lifetime.total_seconds()
    if expires - issued > limit or expires - time.time() > limit + LEEWAY_SECONDS:
        raise AuthenticationError(
            f"the token lives longer than this deployment accepts ({limit:g} seconds)"
        )
    return Claims(user_id, None, ("cli",), float(issued), float(expires))
