"""Bearer-token authentication: the active user that a request's token speaks for."""

from __future__ import annotations

import functools

from aiohttp import web

from conveyor.errors import AuthenticationError, InvalidTokenError
from conveyor.http.keys import TOKENS, USER, USER_CACHE
from conveyor.http.runtime import run_db
from conveyor.models import User
from conveyor.services import users


async def bearer_user(request: web.Request) -> User:
    """The active user of `Authorization: Bearer <token>`; AuthenticationError otherwise.

    Verified tokens and users are cached (TokenVerifier, UserCache), so most requests cost
    no signature check and no query."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("send 'Authorization: Bearer <token>'")
    state = request.config_dict
    claims = state[TOKENS].verify(token.strip())
    fetch = functools.partial(run_db, state, users.get_by_id)
    user = await state[USER_CACHE].get(claims.user_id, fetch)
    if user is None or not user.active:
        raise InvalidTokenError("the token's user does not exist or is deactivated")
    return user


async def authenticate(request: web.Request) -> None:
    """Any active user may go on; they become `request[USER]`."""
    request[USER] = await bearer_user(request)
