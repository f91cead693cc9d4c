"""Sign-in links made on the server: a single-use secret that opens a browser session, for
someone who can run `conveyor` there (as `conveyor tokens issue` makes a token). `conveyor
dev` prints one for its admin, so the dashboard opens without a password to set first.

The session counts as signed in on the server (`amr` `cli`), as that token does: an admin
who must use a second factor acts as admin with it. Links are stored as their SHA-256 and
work once."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid

from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import InvalidTokenError
from conveyor.ids import uuid7
from conveyor.models import OneTimeToken, TokenPurpose
from conveyor.models.base import utcnow
from conveyor.services import sessions
from conveyor.services.audit import Client
from conveyor.services.auth import TokenConfig
from conveyor.services.sessions import Lifetimes, Tokens, hash_secret

#: The visible start of every sign-in link's token.
PREFIX = "cvl_"
#: How a session opened with a link signed in (RFC 8176 has no value for it; as a CLI token).
AMR = ("cli",)


def issue(db: sessionmaker[Session], user_id: uuid.UUID, ttl: dt.timedelta) -> str:
    """A new sign-in token for the user, good once within `ttl`."""
    token = PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    with transaction(db) as session:
        session.add(
            OneTimeToken(
                id=uuid7(),
                purpose=TokenPurpose.SIGN_IN_LINK.value,
                user_id=user_id,
                token_hash=hash_secret(token),
                created_at=now,
                expires_at=now + ttl,
            )
        )
    return token


def redeem(
    db: sessionmaker[Session],
    config: TokenConfig,
    lifetimes: Lifetimes,
    token: str,
    *,
    client: Client,
) -> Tokens:
    """Use a sign-in token up: a new session of its user (the `login` audit event). An
    unknown, used or expired token, or one of a deactivated user, is an InvalidTokenError."""
    now = utcnow()
    with transaction(db) as session:
        found = sessions.live_token(session, token, TokenPurpose.SIGN_IN_LINK, now)
        if found is None:
            raise InvalidTokenError("this sign-in link is unknown, used or expired")
        link, user = found
        if not user.active:
            raise InvalidTokenError("the account is deactivated")
        if not sessions.use_up(session, link.id, now):
            raise InvalidTokenError("this sign-in link was used")
        return sessions.start(session, config, lifetimes, user, amr=AMR, client=client)
