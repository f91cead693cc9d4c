"""API tokens: HS256 JWTs with pinned algorithm, expiry, issuer and audience."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import jwt

from conveyor.errors import AuthenticationError

ALGORITHM = "HS256"


@dataclass(frozen=True)
class TokenConfig:
    secret: str
    issuer: str
    audience: str
    ttl: dt.timedelta


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


def verify_token(config: TokenConfig, token: str) -> uuid.UUID:
    """The user id a valid token speaks for; AuthenticationError otherwise."""
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
        return uuid.UUID(claims["sub"])
    except jwt.ExpiredSignatureError:
        raise AuthenticationError("the token has expired") from None
    except (jwt.InvalidTokenError, ValueError) as exc:
        raise AuthenticationError(f"invalid token: {exc}") from None
