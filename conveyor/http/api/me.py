"""Routes of the signed-in account itself: its profile and its password. API keys may not
call them: an account's own security is for its owner, signed in."""

from __future__ import annotations

import datetime as dt
import uuid

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from conveyor.errors import InvalidRequestError
from conveyor.http.api.auth import PASSWORD, forget_sign_ins
from conveyor.http.api.params import read_body, respond, routes
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, PRINCIPAL, THROTTLES, USER_CACHE
from conveyor.http.routes import Answer
from conveyor.http.runtime import run_db
from conveyor.models import Role, User
from conveyor.services import accounts


class MeOut(BaseModel):
    """The signed-in account."""

    id: uuid.UUID
    email: str
    name: str | None
    role: Role
    email_verified: bool
    mfa_enabled: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None

    @classmethod
    def of(cls, user: User) -> MeOut:
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            role=Role(user.role),
            email_verified=user.email_verified_at is not None,
            mfa_enabled=user.mfa_enabled,
            created_at=user.created_at,
            last_login_at=user.last_login_at,
        )


class MeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, description="A display name; null: none")
    email: str | None = Field(None, description="Not supported yet: sending it is a 422")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = PASSWORD
    new_password: str = PASSWORD


@routes.get(
    "/me",
    role=Role.MEMBER,
    summary="My account",
    answers={200: Answer("The account", MeOut)},
)
async def get_me(request: web.Request) -> web.Response:
    """The signed-in account, as stored (its own role, whatever this sign-in acts as)."""
    return respond(MeOut.of(request[PRINCIPAL].user))


@routes.route(
    "PATCH",
    "/me",
    role=Role.MEMBER,
    summary="Change my profile",
    body=MeUpdate,
    answers={200: Answer("The account, changed", MeOut)},
    errors={400: "Malformed JSON", 422: "A name too long, or an email change (not supported yet)"},
)
async def patch_me(request: web.Request) -> web.Response:
    """Change the display name. The email address cannot be changed yet."""
    body = await read_body(request, MeUpdate)
    if "email" in body.model_fields_set:
        message = "changing the email address is not supported yet"
        raise InvalidRequestError(message, errors=[{"field": "email", "message": message}])
    user = request[PRINCIPAL].user
    if "name" in body.model_fields_set:
        user = await run_db(request.config_dict, accounts.update_profile, user.id, body.name)
        request.config_dict[USER_CACHE].drop(user.id)
    return respond(MeOut.of(user))


@routes.post(
    "/me/password",
    role=Role.MEMBER,
    summary="Change my password",
    body=PasswordChange,
    answers={204: Answer("Changed: my other sessions are ended", content_type=None)},
    errors={
        400: "Malformed JSON",
        422: "A wrong current password, or a new one that breaks a rule (named)",
        429: "Too many wrong passwords for the account",
    },
)
async def change_password(request: web.Request) -> web.Response:
    """Change the password, giving the current one: every other session ends (this one stays
    signed in), and a notice is emailed."""
    state = request.config_dict
    principal = request[PRINCIPAL]
    body = await read_body(request, PasswordChange)
    changed = await run_db(
        state,
        accounts.change_password,
        state[CONTAINER].submissions,
        state[THROTTLES],
        principal.user.id,
        body.current_password,
        body.new_password,
        keep_session=principal.session_id,
        client=client_of(request),
    )
    forget_sign_ins(state, changed)
    return web.Response(status=204)
