"""API tokens: HS256 JWTs with pinned algorithm, expiry, issuer and audience."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass

import jwt

from conveyor.errors import AuthenticationError, ConfigurationError
from conveyor.settings import Settings

ALGORITHM = "HS256"


@dataclass(frozen=True)
class TokenConfig:
    secret: str
    issuer: str
    audience: str
    ttl: dt.timedelta

    @classmethod
    def of(cls, settings: Settings) -> TokenConfig:
        """The token settings; ConfigurationError without a secret key."""
        if settings.secret_key is None:
            raise ConfigurationError("CONVEYOR_SECRET_KEY is not set: it signs the API tokens")
        return cls(
            secret=settings.secret_key.get_secret_value(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl=dt.timedelta(seconds=settings.token_ttl_seconds),
        )


def issue_token(config: TokenConfig, user_id: uuid.UUID, *, ttl: dt.timedelta | None = None) -> str:
    """A signed bearer token for the user."""
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(user_id),
        "iss": config.issuer,
        "aud": config.audience,
        "iat": now,
        "nbf": now,
        "exp": now + (ttl or config.ttl),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, config.secret, algorithm=ALGORITHM)


class TokenVerifier:
    """Verifies tokens, with memory: a token already verified is trusted, without checking
    its signature again, until its expiry or for `ttl` seconds, whichever comes first."""

    def __init__(self, config: TokenConfig, *, ttl: float = 60.0, max_entries: int = 10_000):
        self.config = config
        self.ttl = ttl
        self.max_entries = max_entries
        self._verified: dict[str, tuple[uuid.UUID, float]] = {}

    def verify(self, token: str) -> uuid.UUID:
        """The user id a valid token speaks for; AuthenticationError otherwise."""
        now = time.time()
        hit = self._verified.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        user_id, expires = _decode(self.config, token)
        if len(self._verified) >= self.max_entries:
            self._verified.clear()
        self._verified[token] = (user_id, min(expires, now + self.ttl))
        return user_id


def _decode(config: TokenConfig, token: str) -> tuple[uuid.UUID, float]:
    try:
        claims = jwt.decode(
            token,
            config.secret,
            algorithms=[ALGORITHM],
            issuer=config.issuer,
            audience=config.audience,
            options={"require": ["exp", "iss", "aud", "sub"]},
            leeway=5,
        )
        return uuid.UUID(claims["sub"]), float(claims["exp"])
    except jwt.ExpiredSignatureError:
        raise AuthenticationError("the token has expired") from None
    except (jwt.InvalidTokenError, ValueError) as exc:
        raise AuthenticationError(f"invalid token: {exc}") from None
