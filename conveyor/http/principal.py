"""The principal: the account a request acts for, and what narrows it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from conveyor.models import Role, User


@dataclass(frozen=True)
class Principal:
    """The account a request acts for, and what narrows it."""

    user: User
    #: The role it acts with: the user's, or `member` for a role that must use a second
    #: factor when this sign-in did not (CONVEYOR_MFA_REQUIRED_ROLES).
    role: Role
    #: An API key's scopes; None for an access token (all that the role allows).
    scopes: frozenset[str] | None = None
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    amr: tuple[str, ...] = ()

    @property
    def viewer(self) -> User:
        """The user as the services see it: with the role it acts with."""
        if self.role == self.user.role:
            return self.user
        return _with_role(self.user, self.role)


def _with_role(user: User, role: Role) -> User:
    """A detached copy of `user` acting as `role` (the services read `viewer.role`)."""
    return User(
        id=user.id,
        email=user.email,
        role=role.value,
        active=user.active,
        created_at=user.created_at,
        name=user.name,
    )
