"""Routes of user administration (admins): list and read users, change a role, disable."""

from __future__ import annotations

import datetime as dt
import uuid

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from conveyor.errors import InvalidRequestError
from conveyor.http.api.params import (
    CURSOR,
    next_page_link,
    page_limit,
    page_size,
    read_body,
    respond,
    routes,
    uuid_of,
)
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, PRINCIPAL, USER_CACHE
from conveyor.http.routes import Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import Role, Scope, User
from conveyor.services import users
from conveyor.services.cursors import Cursors


class UserOut(BaseModel):
    """An account, as admins see it."""

    id: uuid.UUID
    email: str
    name: str | None
    role: Role
    active: bool
    created_at: dt.datetime
    email_verified_at: dt.datetime | None
    last_login_at: dt.datetime | None
    mfa_enabled: bool

    @classmethod
    def of(cls, u: User) -> UserOut:
        return cls(
            id=u.id,
            email=u.email,
            name=u.name,
            role=Role(u.role),
            active=u.active,
            created_at=u.created_at,
            email_verified_at=u.email_verified_at,
            last_login_at=u.last_login_at,
            mfa_enabled=u.mfa_enabled,
        )


class UserPage(BaseModel):
    """One page of users, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[UserOut]
    next_cursor: str | None = None


class UserChange(BaseModel):
    """What an admin changes of a user: the role, whether the account is active."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    active: bool | None = Field(
        None, description="false: disable (ends every session, refuses its tokens)"
    )


USER_ID = Parameter(
    "user_id", "path", {"type": "string", "format": "uuid"}, "The user's id", required=True
)
ADMINS_ONLY = {403: "Not an admin (or an admin signed in without a second factor)"}
_BOOLEANS = {"true": True, "false": False}


def _active_filter(request: web.Request) -> bool | None:
    value = request.query.get("active")
    if value is None:
        return None
    if value not in _BOOLEANS:
        raise InvalidRequestError(
            "active must be true or false", errors=[{"field": "active", "message": "true or false"}]
        )
    return _BOOLEANS[value]


def _role_filter(request: web.Request) -> Role | None:
    value = request.query.get("role")
    if value is None:
        return None
    if value not in set(Role):
        roles = ", ".join(Role)
        raise InvalidRequestError(
            f"role must be one of {roles}", errors=[{"field": "role", "message": f"one of {roles}"}]
        )
    return Role(value)


@routes.get(
    "/users",
    role=Role.ADMIN,
    scope=Scope.USERS_READ,
    summary="List users (admins)",
    parameters=[
        Parameter("role", "query", {"enum": list(Role)}, "Only users of this role"),
        Parameter("active", "query", {"type": "boolean"}, "Only active (or disabled) users"),
        Parameter(
            "email", "query", {"type": "string", "maxLength": 320}, "Emails starting with this"
        ),
        page_limit("Users per page"),
        CURSOR,
    ],
    answers={
        200: Answer(
            "A page of users, newest first",
            UserPage,
            headers={"Link": '`<url>; rel="next"`: the next page'},
        )
    },
    errors={**ADMINS_ONLY, 400: "A cursor issued for other filters", 422: "A bad filter"},
)
async def list_users(request: web.Request) -> web.Response:
    """Every account, newest first, filtered by role, active or not, and email prefix."""
    state = request.config_dict
    settings = state[CONTAINER].settings
    email = request.query.get("email") or None
    if email is not None and len(email) > 320:
        raise InvalidRequestError(
            "email: at most 320 characters",
            errors=[{"field": "email", "message": "at most 320 characters"}],
        )
    page = await run_db(
        state,
        users.list_page,
        Cursors.of(settings),
        role=_role_filter(request),
        active=_active_filter(request),
        email_prefix=email,
        cursor=request.query.get("cursor") or None,
        limit=page_size(request, settings),
    )
    out = UserPage(items=[UserOut.of(u) for u in page.items], next_cursor=page.next_cursor)
    return respond(out, headers=next_page_link(request, settings, page.next_cursor))


@routes.get(
    "/users/{user_id}",
    role=Role.ADMIN,
    scope=Scope.USERS_READ,
    summary="Read a user (admins)",
    parameters=[USER_ID],
    answers={200: Answer("The user", UserOut)},
    errors={**ADMINS_ONLY, 404: "No such user"},
)
async def get_user(request: web.Request) -> web.Response:
    """One account: its role, whether it is active, verified, and uses a second factor."""
    user_id = uuid_of(request, "user_id", "user")
    return respond(UserOut.of(await run_db(request.config_dict, users.get, user_id)))


@routes.route(
    "PATCH",
    "/users/{user_id}",
    role=Role.ADMIN,
    scope=Scope.USERS_WRITE,
    summary="Change a user's role, or disable them (admins)",
    parameters=[USER_ID],
    body=UserChange,
    answers={200: Answer("The user, changed", UserOut)},
    errors={
        **ADMINS_ONLY,
        400: "Malformed JSON",
        404: "No such user",
        409: "Demoting or disabling yourself, or the last active admin",
        422: "An unknown role, or a bad field",
    },
)
async def change_user(request: web.Request) -> web.Response:
    """Change a user's role (`role_changed` in the audit log) or disable them
    (`user_disabled`: every session ends and their tokens are refused at once)."""
    state = request.config_dict
    user_id = uuid_of(request, "user_id", "user")
    change = await read_body(request, UserChange)
    user = await run_db(
        state,
        users.update,
        request[PRINCIPAL].user.id,
        user_id,
        role=change.role,
        active=change.active,
        client=client_of(request),
    )
    state[USER_CACHE].drop(user_id)  # this process refuses a disabled user's tokens at once
    return respond(UserOut.of(user))
