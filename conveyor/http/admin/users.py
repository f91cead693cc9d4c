"""The users and roles pages (admins only): the accounts, one account's sign-ins and keys, and
the forms that change a role, deactivate or activate an account, and sign it out everywhere."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from conveyor.http.admin import routes
from conveyor.http.admin.audit import PAGE
from conveyor.http.api.params import uuid_of
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, PRINCIPAL, SESSION_CACHE, USER_CACHE
from conveyor.http.page_params import (
    CURSOR,
    LIMIT,
    bad_field,
    cursor_of,
    limit_of,
    next_page_url,
    query_text,
)
from conveyor.http.pages import form_of, render, text_field
from conveyor.http.routes import Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import ApiKey, AuthSession, Role, User
from conveyor.services import api_keys, sessions, users
from conveyor.services.cursors import Cursors

USER_ID = Parameter(
    "user_id", "path", {"type": "string", "format": "uuid"}, "The user's id", required=True
)
#: What a form action answers: back to the user's page, which says what was done.
BACK = {303: Answer("Done: back to the user's page", content_type=None)}
#: The messages of `?done=`: the page shows these, never text from the URL.
DONE = {
    "role": "The role is saved.",
    "deactivated": "The account is deactivated: its sessions ended and its tokens are refused.",
    "activated": "The account is active again. It signs in anew.",
    "signed-out": "Every session of this account has ended.",
}
_BOOLEANS = {"true": True, "false": False}


def _role(value: str | None) -> Role | None:
    if value is None:
        return None
    if value not in set(Role):
        raise bad_field("role", f"one of {', '.join(Role)}")
    return Role(value)


def _active(value: str | None) -> bool | None:
    if value is None:
        return None
    if value not in _BOOLEANS:
        raise bad_field("active", "true or false")
    return _BOOLEANS[value]


@routes.get(
    "/users",
    name="admin_users",
    role=Role.ADMIN,
    answers=PAGE,
    parameters=(
        Parameter("role", "query", {"enum": list(Role)}, "Only users of this role"),
        Parameter("active", "query", {"type": "boolean"}, "Only active (or deactivated) users"),
        Parameter("email", "query", {"type": "string"}, "Emails starting with this"),
        LIMIT,
        CURSOR,
    ),
    errors={400: "A cursor of other filters", 422: "A bad filter"},
)
async def list_users(request: web.Request) -> web.Response:
    """Users and roles: every account, newest first, filtered by role, whether active, and
    the start of the email address."""
    state = request.config_dict
    role = _role(query_text(request, "role"))
    active = _active(query_text(request, "active"))
    email = query_text(request, "email")
    limit = limit_of(request)
    cursor = cursor_of(request)
    page = await run_db(
        state,
        users.list_page,
        Cursors.of(state[CONTAINER].settings),
        role=role,
        active=active,
        email_prefix=email,
        cursor=cursor,
        limit=limit,
    )
    return render(
        request,
        "admin/users.html",
        title="Users and roles",
        rows=page.items,
        roles=list(Role),
        filters={
            "role": role or "",
            "active": "" if active is None else str(active).lower(),
            "email": email or "",
        },
        filtered=role is not None or active is not None or email is not None,
        next_url=next_page_url(request, page.next_cursor),
        first_url=None if cursor is None else str(request.rel_url.without_query_params("cursor")),
    )


@dataclass(frozen=True)
class Account:
    """What the user's page shows: the account, its open sessions and its API keys."""

    user: User
    sessions: list[AuthSession]
    keys: list[ApiKey]


def _account(db: sessionmaker[Session], user_id: uuid.UUID) -> Account:
    user = users.get(db, user_id)
    return Account(user, sessions.list_open(db, user_id), api_keys.list_keys(db, user_id))


@routes.get(
    "/users/{user_id}",
    name="admin_user",
    role=Role.ADMIN,
    answers=PAGE,
    parameters=(USER_ID, Parameter("done", "query", {"enum": list(DONE)}, "What was just done")),
    errors={404: "No such user"},
)
async def show_user(request: web.Request) -> web.Response:
    """A user: role, verified, second factor, active, sign-ins, sessions and API keys, with
    the forms that change them."""
    user_id = uuid_of(request, "user_id", "user")
    account = await run_db(request.config_dict, _account, user_id)
    return render(
        request,
        "admin/user.html",
        title=account.user.email,
        account=account,
        roles=list(Role),
        myself=account.user.id == request[PRINCIPAL].user.id,
        notice=DONE.get(request.query.get("done", "")),
    )


def _back(user_id: uuid.UUID, done: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/admin/users/{user_id}?done={done}")


async def _update(
    request: web.Request,
    user_id: uuid.UUID,
    *,
    role: Role | None = None,
    active: bool | None = None,
) -> None:
    """Change the user's role or whether active, as the signed-in admin (written to the
    audit log); this process forgets the user's cached account at once, so that it refuses
    a deactivated user's tokens, and a demoted one's rights, from the next request."""
    await run_db(
        request.config_dict,
        users.update,
        request[PRINCIPAL].user.id,
        user_id,
        role=role,
        active=active,
        client=client_of(request),
    )
    request.config_dict[USER_CACHE].drop(user_id)


@routes.post(
    "/users/{user_id}/role",
    name="admin_user_role",
    role=Role.ADMIN,
    answers=BACK,
    parameters=(USER_ID,),
    errors={
        404: "No such user",
        409: "Demoting yourself, or the last active admin",
        422: "An unknown role",
    },
)
async def change_role(request: web.Request) -> web.Response:
    """Change a user's role (`role_changed` in the audit log)."""
    user_id = uuid_of(request, "user_id", "user")
    role = _role(text_field(await form_of(request), "role"))
    await _update(request, user_id, role=role)
    raise _back(user_id, "role")


@routes.post(
    "/users/{user_id}/active",
    name="admin_user_active",
    role=Role.ADMIN,
    answers=BACK,
    parameters=(USER_ID,),
    errors={
        404: "No such user",
        409: "Deactivating yourself, or the last active admin",
        422: "active is neither true nor false",
    },
)
async def change_active(request: web.Request) -> web.Response:
    """Deactivate a user (`user_disabled`: every session ends, their tokens are refused at
    once) or activate them again (`user_enabled`)."""
    user_id = uuid_of(request, "user_id", "user")
    active = _active(text_field(await form_of(request), "active"))
    await _update(request, user_id, active=active)
    raise _back(user_id, "activated" if active else "deactivated")


@routes.post(
    "/users/{user_id}/sign-out",
    name="admin_user_sign_out",
    role=Role.ADMIN,
    answers=BACK,
    parameters=(USER_ID,),
    errors={404: "No such user"},
)
async def sign_out_everywhere(request: web.Request) -> web.Response:
    """End every session of a user (`session_revoked`, naming the admin): their refresh
    tokens stop working at once, their access tokens within seconds. An admin signing
    themselves out keeps the session of this request."""
    state = request.config_dict
    user_id = uuid_of(request, "user_id", "user")
    await form_of(request)  # the CSRF check of a signed-in browser
    principal = request[PRINCIPAL]
    user = await run_db(state, users.get, user_id)
    ended = await run_db(
        state,
        sessions.revoke_others,
        user.id,
        keep=principal.session_id if user.id == principal.user.id else None,
        client=client_of(request),
        actor_id=principal.user.id,
    )
    for session_id in ended:
        state[SESSION_CACHE].drop(session_id)
    raise _back(user_id, "signed-out")
