"""API keys: long-lived credentials of machine clients, `cvk_<prefix>_<secret>`, shown once
and stored as their SHA-256. A key acts as its owner, narrowed to its scopes."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import ConflictError, InvalidRequestError, InvalidTokenError, NotFoundError
from conveyor.ids import uuid7
from conveyor.models import ApiKey, Role, Scope, User
from conveyor.models.base import utcnow
from conveyor.services import audit
from conveyor.services.audit import Client
from conveyor.services.jobs import rowcount
from conveyor.services.sessions import hash_secret

#: The visible start of every API key: recognisable in a leak scanner or a log.
KEY_PREFIX = "cvk_"
#: Hex characters of a key's visible prefix after `cvk_` (48 bits: the column holds 16).
PREFIX_HEX = 12
#: Keys drawn before giving up on a prefix that is not taken (one is, about once in 2**48).
PREFIX_ATTEMPTS = 3
#: `last_used_at` is written at most this often per key: no write per request.
TOUCH_INTERVAL = dt.timedelta(minutes=1)
#: The least role that may use each scope; the others are a member's.
SCOPE_ROLES = {
    Scope.OPERATIONS: Role.OPERATOR,
    Scope.USERS_READ: Role.ADMIN,
    Scope.USERS_WRITE: Role.ADMIN,
}


@dataclass(frozen=True)
class NewKey:
    """What a key is made of, as asked for."""

    name: str
    scopes: Sequence[str]
    expires_at: dt.datetime | None = None


def _scopes_for(role: Role, scopes: Sequence[str]) -> list[str]:
    """`scopes`, deduplicated; InvalidRequestError naming `scopes.N` for one that is unknown
    or that the role can never use."""
    known = {scope.value for scope in Scope}
    for n, scope in enumerate(scopes):
        if scope not in known:
            message = f"unknown scope; one of: {', '.join(sorted(known))}"
        elif not role.at_least(SCOPE_ROLES.get(Scope(scope), Role.MEMBER)):
            message = f"a {role} cannot use this scope"
        else:
            continue
        raise InvalidRequestError(
            f"scope {scope[:100]!r}: {message}",
            errors=[{"field": f"scopes.{n}", "message": message}],
        )
    return list(dict.fromkeys(scopes))


def new_key() -> tuple[str, str]:
    """A new key and its visible prefix (`cvk_` and PREFIX_HEX hex characters)."""
    prefix = KEY_PREFIX + secrets.token_hex(PREFIX_HEX // 2)
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def create(
    db: sessionmaker[Session],
    user_id: uuid.UUID,
    new: NewKey,
    *,
    max_keys: int,
    client: Client,
) -> tuple[ApiKey, str]:
    """A new key of the user and the key itself (never stored, never shown again).
    InvalidRequestError for bad scopes or a past expiry; ConflictError past `max_keys`."""
    now = utcnow()
    if new.expires_at is not None and new.expires_at <= now:
        raise InvalidRequestError(
            "the key would be expired already",
            errors=[{"field": "expires_at", "message": "must be in the future"}],
        )
    for _ in range(PREFIX_ATTEMPTS):
        try:
            return _insert(db, user_id, new, now=now, max_keys=max_keys, client=client)
        except IntegrityError:  # the prefix is another key's: draw again
            continue
    raise ConflictError("could not draw an unused key prefix: try again")


def _insert(
    db: sessionmaker[Session],
    user_id: uuid.UUID,
    new: NewKey,
    *,
    now: dt.datetime,
    max_keys: int,
    client: Client,
) -> tuple[ApiKey, str]:
    """`create`'s transaction, with a newly drawn key; IntegrityError if its prefix is taken."""
    with transaction(db) as session:
        user = session.get(User, user_id, with_for_update=True)
        if user is None:
            raise NotFoundError("the account does not exist")
        scopes = _scopes_for(Role(user.role), new.scopes)
        held = session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        )
        if (held or 0) >= max_keys:
            raise ConflictError(
                f"you hold {held} API keys, the most allowed (CONVEYOR_API_KEYS_MAX_PER_USER): "
                "revoke one first"
            )
        key, prefix = new_key()
        row = ApiKey(
            id=uuid7(),
            user_id=user_id,
            name=new.name,
            prefix=prefix,
            key_hash=hash_secret(key),
            scopes=scopes,
            created_at=now,
            expires_at=new.expires_at,
        )
        session.add(row)
        audit.record(
            session,
            "api_key_created",
            client=client,
            actor_id=user_id,
            subject_id=user_id,
            api_key_id=str(row.id),
            prefix=prefix,
            scopes=scopes,
        )
    return row, key


def list_keys(db: sessionmaker[Session], user_id: uuid.UUID) -> list[ApiKey]:
    """The user's keys that are not revoked, newest first (expired ones too, marked so)."""
    with db() as session:
        return list(
            session.scalars(
                select(ApiKey)
                .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
                .order_by(ApiKey.id.desc())
            )
        )


def revoke(
    db: sessionmaker[Session], user_id: uuid.UUID, key_id: uuid.UUID, *, client: Client
) -> None:
    """Revoke one of the user's keys; NotFoundError for another's, or one revoked before."""
    with transaction(db) as session:
        revoked = session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        if rowcount(revoked) != 1:
            raise NotFoundError(f"no API key {key_id}")
        audit.record(
            session,
            "api_key_revoked",
            client=client,
            actor_id=user_id,
            subject_id=user_id,
            api_key_id=str(key_id),
        )


def find(db: sessionmaker[Session], key: str) -> ApiKey | None:
    """The key's row (revoked or expired ones too), if it exists."""
    with db() as session:
        return session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_secret(key))).first()


def check_usable(row: ApiKey | None, now: dt.datetime) -> ApiKey:
    """`row`, if it lets its client in; InvalidTokenError saying why otherwise."""
    if row is None:
        raise InvalidTokenError("unknown API key")
    if row.revoked_at is not None:
        raise InvalidTokenError("the API key was revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise InvalidTokenError("the API key has expired")
    return row


def touch(db: sessionmaker[Session], key_id: uuid.UUID) -> None:
    """Record that a key was used now, unless that was recorded in the last minute."""
    now = utcnow()
    with transaction(db) as session:
        session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key_id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - TOUCH_INTERVAL),
            )
            .values(last_used_at=now)
        )
