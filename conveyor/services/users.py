"""Users: create and look up the accounts that own jobs."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import ConflictError, InvalidRequestError, NotFoundError
from conveyor.models import Role, User


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not (local and at and domain) or len(email) > 320 or " " in email:
        raise InvalidRequestError(
            f"{email!r} is not an email address",
            errors=[{"field": "email", "message": "not an email address"}],
        )
    return email


def create_user(db: sessionmaker[Session], email: str, role: Role = Role.MEMBER) -> User:
    """A new active user; an email already taken is a conflict."""
    email = normalize_email(email)
    with transaction(db) as session:
        if session.scalar(select(func.count()).where(User.email == email)):
            raise ConflictError(f"a user with email {email} already exists")
        user = User(email=email, role=Role(role).value, active=True)
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
    """The user with this email, created if missing (for the embedded mode's admin)."""
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


def set_active(db: sessionmaker[Session], email: str, active: bool) -> User:
    """Activate or deactivate a user. A deactivated user's tokens are refused (by each web
    process within the few seconds it caches users); their jobs stay as they are."""
    with transaction(db) as session:
        user = _by_email_for_update(session, email)
        user.active = active
    return user


def set_role(db: sessionmaker[Session], email: str, role: Role) -> User:
    """Make a user an admin or a member."""
    with transaction(db) as session:
        user = _by_email_for_update(session, email)
        user.role = Role(role).value
    return user


def _by_email_for_update(session: Session, email: str) -> User:
    query = select(User).where(User.email == normalize_email(email)).with_for_update()
    user = session.scalars(query).first()
    if user is None:
        raise NotFoundError(f"no user with email {email}")
    return user
