"""Users: create, look up and list the accounts that own jobs; admins change their role and
disable them."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import ConflictError, InvalidRequestError, NotFoundError
from conveyor.models import Role, User
from conveyor.models.base import utcnow
from conveyor.services import audit, sessions
from conveyor.services.audit import Client
from conveyor.services.cursors import Cursors, Scope

#: Characters an address holds only quoted (RFC 5322 specials), which no account's address
#: needs: a `:` would break the MFA provisioning URI's label, for one.
_SPECIALS = frozenset('()<>[]:;@\\,"')


def normalize_email(email: str) -> str:
    """The address trimmed and lowercased; 422 naming `email` unless it is one `local@domain`
    without spaces, control characters or (unquoted) specials, at most 320 characters."""
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if (
        not (local and at and domain)
        or len(email) > 320
        or any(c in _SPECIALS or c.isspace() or not c.isprintable() for c in local + domain)
    ):
        raise InvalidRequestError(
            f"{email!r} is not an email address",
            errors=[{"field": "email", "message": "not an email address"}],
        )
    return email


def create_user(db: sessionmaker[Session], email: str, role: Role = Role.MEMBER) -> User:
    """A new active user without a password, made by the operator (`conveyor dev`'s admin,
    tests): its address counts as verified. An email already taken is a conflict."""
    email = normalize_email(email)
    with transaction(db) as session:
        if session.scalar(select(func.count()).where(User.email == email)):
            raise ConflictError(f"a user with email {email} already exists")
        user = User(email=email, role=Role(role).value, active=True, email_verified_at=utcnow())
        session.add(user)
    return user


def get_by_email(db: sessionmaker[Session], email: str) -> User:
    with db() as session:
        user = session.scalars(select(User).where(User.email == normalize_email(email))).first()
    if user is None:
        raise NotFoundError(f"no user with email {email}")
    return user


def get_by_id(db: sessionmaker[Session], user_id: uuid.UUID) -> User | None:
    with db() as session:
        return session.get(User, user_id)


def ensure_user(db: sessionmaker[Session], email: str, role: Role) -> User:
    """The user with this email, created (verified) if missing (for the embedded mode's
    admin)."""
    try:
        return get_by_email(db, email)
    except NotFoundError:
        return create_user(db, email, role)


def list_users(db: sessionmaker[Session], *, role: Role | None = None) -> list[User]:
    """Every user (of `role`, if given), oldest first."""
    query = select(User).order_by(User.created_at, User.id)
    if role is not None:
        query = query.where(User.role == Role(role).value)
    with db() as session:
        return list(session.scalars(query))


@dataclass(frozen=True)
class UserPage:
    items: list[User]
    next_cursor: str | None


def list_page(
    db: sessionmaker[Session],
    cursors: Cursors,
    *,
    role: Role | None = None,
    active: bool | None = None,
    email_prefix: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> UserPage:
    """Users newest first, by keyset pagination on the time-ordered id, filtered by role,
    whether active, and the start of their email address."""
    scope = Scope.of(
        [f"role:{role or ''}", f"active:{'' if active is None else active}"],
        ["users", f"email:{email_prefix or ''}"],
        None,
    )
    query = select(User).order_by(User.id.desc()).limit(limit + 1)
    if role is not None:
        query = query.where(User.role == Role(role).value)
    if active is not None:
        query = query.where(User.active.is_(active))
    if email_prefix:
        escaped = email_prefix.lower().replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")
        query = query.where(User.email.like(f"{escaped}%", escape="\\"))
    if cursor is not None:
        query = query.where(User.id < cursors.read(cursor, scope))
    with db() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return UserPage(rows, cursors.issue(rows[-1].id, scope) if more else None)


def emails_of(db: sessionmaker[Session], user_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The email addresses of these users, by id (those that no longer exist are left out):
    how a page names the people of a list of events."""
    if not user_ids:
        return {}
    with db() as session:
        rows = session.execute(select(User.id, User.email).where(User.id.in_(set(user_ids))))
        return {user_id: email for user_id, email in rows}


def get(db: sessionmaker[Session], user_id: uuid.UUID) -> User:
    """The user with this id; NotFoundError otherwise."""
    user = get_by_id(db, user_id)
    if user is None:
        raise NotFoundError(f"no user {user_id}")
    return user


def update(
    db: sessionmaker[Session],
    actor_id: uuid.UUID | None,
    user_id: uuid.UUID,
    *,
    role: Role | None = None,
    active: bool | None = None,
    client: Client = audit.NOBODY,
) -> User:
    """An admin (`actor_id`; None for the operator at the command line) changes a user's role
    or disables (or enables) them, each change audited (the CLI's with `via: "cli"`).

    Disabling ends every session of the user and refuses the access tokens issued until
    now; enabling them again revives neither. Admins may neither demote nor disable
    themselves, and nobody may leave no active admin (the rows of active admins are locked,
    so two admins demoting each other cannot both win)."""
    via = {"via": "cli"} if actor_id is None else {}
    with transaction(db) as session:
        user = session.get(User, user_id, with_for_update=True)
        if user is None:
            raise NotFoundError(f"no user {user_id}")
        losing_admin = (
            user.role == Role.ADMIN
            and user.active
            and ((role is not None and role != Role.ADMIN) or active is False)
        )
        if losing_admin:
            _keep_an_admin(session, actor_id, user, "active" if active is False else "role")
        if role is not None and role != user.role:
            audit.record(
                session,
                "role_changed",
                client=client,
                actor_id=actor_id,
                subject_id=user.id,
                **{"from": user.role, "to": Role(role).value},
                **via,
            )
            user.role = Role(role).value
        if active is not None and active != user.active:
            user.active = active
            if active:
                audit.record(
                    session,
                    "user_enabled",
                    client=client,
                    actor_id=actor_id,
                    subject_id=user.id,
                    **via,
                )
            else:
                user.tokens_valid_after = utcnow()
                ended = sessions.revoke_all(session, user.id, reason="disabled")
                audit.record(
                    session,
                    "user_disabled",
                    client=client,
                    actor_id=actor_id,
                    subject_id=user.id,
                    sessions_ended=len(ended),
                    **via,
                )
    return user


def _keep_an_admin(session: Session, actor_id: uuid.UUID | None, user: User, field: str) -> None:
    """ConflictError when `user`, an active admin, may not stop being one: they are the
    actor, or the last active admin."""
    if user.id == actor_id:
        raise ConflictError(
            "admins cannot demote or disable themselves: ask another admin",
            errors=[{"field": field, "message": "you cannot demote or disable yourself"}],
        )
    others = session.scalars(
        select(User.id)
        .where(User.role == Role.ADMIN.value, User.active.is_(True), User.id != user.id)
        .with_for_update()
    ).all()
    if not others:
        raise ConflictError(
            "this is the last active admin: make another admin first",
            errors=[{"field": field, "message": "the last active admin"}],
        )
