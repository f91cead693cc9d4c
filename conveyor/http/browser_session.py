"""Signing in from a browser: the session cookie's attributes, the checks a request with it
passes (its session, its user, where the request came from), and the authenticator of the
pages (`/admin`, `/app`), which take the cookie or, as the API does, a bearer token.

A cookie names an `auth_sessions` row, the same as an API sign-in's: it is listed by
`GET /v1/me/sessions` and ended there, by `POST /app/logout`, by a password change or an
account's deactivation, as an access token of the session would be."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from conveyor.errors import AuthenticationError, InvalidTokenError, PermissionDeniedError
from conveyor.http.auth import (
    acting_role,
    active_user,
    authenticate,
    authorize,
    networks,
    session_open,
    trusted,
)
from conveyor.http.keys import (
    BROWSER_SESSIONS,
    CONTAINER,
    PRINCIPAL,
    SESSION_COOKIES,
    USER,
)
from conveyor.http.pages import CSRF_TOKEN
from conveyor.http.principal import Principal
from conveyor.http.routes import Route
from conveyor.http.runtime import run_db
from conveyor.http.session_cookie import COOKIE, SECURE_COOKIE
from conveyor.models import Role
from conveyor.services import sessions

__all__ = [
    "LOGIN_PATH",
    "authenticate_page",
    "check_same_origin",
    "clear_session_cookie",
    "cookie_principal",
    "is_secure",
    "landing",
    "login_url",
    "set_session_cookie",
]

LOGIN_PATH = "/app/login"
#: Methods that change nothing: a cookie request with another must come from our own pages.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The pages a sign-in may send the browser on to (`next`).
_PAGES = ("/admin", "/app")
#: Pages `next` may not name: the sign-in's own.
_NOT_NEXT = ("/app/login", "/app/logout")
_MAX_NEXT = 2000


def is_secure(request: web.Request) -> bool:
    """Whether the browser reached us over TLS: directly, through a trusted proxy that says
    so (`X-Forwarded-Proto: https`, CONVEYOR_TRUSTED_PROXIES), or at an https
    CONVEYOR_PUBLIC_URL."""
    if request.secure:
        return True
    settings = request.config_dict[CONTAINER].settings
    if settings.public_url is not None and settings.public_url.scheme == "https":
        return True
    forwarded = request.headers.get("X-Forwarded-Proto")
    if not forwarded or request.remote is None:
        return False
    from_proxy = trusted(request.remote, networks(settings.trusted_proxies))
    return from_proxy and forwarded.split(",")[-1].strip().lower() == "https"


def cookie_name(request: web.Request) -> str:
    return SECURE_COOKIE if is_secure(request) else COOKIE


def own_origins(request: web.Request) -> frozenset[str]:
    """The origins of this server as a browser may name it: CONVEYOR_PUBLIC_URL's, and the
    request's `Host` over http or https (a proxy in front may end TLS without saying so). A
    page of another site never has one of them, and a site that points its own name at us
    (DNS rebinding) gets no cookie of ours to send."""
    origins = {f"http://{request.host}", f"https://{request.host}"}
    public_url = request.config_dict[CONTAINER].settings.public_url
    if public_url is not None:
        parts = urlsplit(str(public_url))
        origins.add(f"{parts.scheme}://{parts.netloc}")
    return frozenset(origins)


def check_same_origin(request: web.Request) -> None:
    """PermissionDeniedError (403) for a request another site made the browser send: one
    with `Sec-Fetch-Site: cross-site`, or an `Origin` that is not ours."""
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        raise PermissionDeniedError("a request from another site may not use your session")
    origin = request.headers.get("Origin")
    if origin is not None and origin not in own_origins(request):
        raise PermissionDeniedError("a request from another origin may not use your session")


def set_session_cookie(
    response: web.StreamResponse, request: web.Request, session_id: uuid.UUID
) -> None:
    """Give the browser the cookie of `session_id`, for as long as the session may last."""
    state = request.config_dict
    secure = is_secure(request)
    response.set_cookie(
        SECURE_COOKIE if secure else COOKIE,
        state[SESSION_COOKIES].value(session_id),
        max_age=state[CONTAINER].settings.session_max_age_seconds,
        path="/",
        secure=secure,
        httponly=True,
        samesite="Strict",
    )


def clear_session_cookie(response: web.StreamResponse, request: web.Request) -> None:
    """Make the browser forget its session cookie."""
    secure = is_secure(request)
    response.del_cookie(
        SECURE_COOKIE if secure else COOKIE,
        path="/",
        secure=secure,
        httponly=True,
        samesite="Strict",
    )


async def cookie_principal(request: web.Request) -> Principal | None:
    """The principal of the request's session cookie; None without a cookie, or for one this
    deployment did not make, of an ended or idle session, of a deactivated user, or of a
    session that began before the user's tokens were revoked (a password change)."""
    state = request.config_dict
    session_id = state[SESSION_COOKIES].read(request.cookies.get(cookie_name(request)))
    if session_id is None:
        return None
    cache = state[BROWSER_SESSIONS]
    row = await cache.get(session_id, functools.partial(run_db, state, sessions.get))
    if row is None or not await session_open(request, session_id):
        return None
    try:
        user = await active_user(request, row.user_id)
    except InvalidTokenError:
        return None
    if user.tokens_valid_after is not None and row.created_at < user.tokens_valid_after:
        return None
    settings = state[CONTAINER].settings
    if cache.due_for_touch(session_id):
        idle = dt.timedelta(seconds=settings.session_idle_seconds)
        if not await run_db(state, sessions.touch, session_id, idle):
            return None
        cache.touched(session_id)
    amr = tuple(row.amr)
    return Principal(user, acting_role(settings, user, amr), session_id=session_id, amr=amr)


def login_url(next_path: str | None = None) -> str:
    """The sign-in page, sending the browser on to `next_path` after it."""
    return f"{LOGIN_PATH}?{urlencode({'next': next_path})}" if next_path else LOGIN_PATH


def landing(next_path: str | None, role: Role) -> str:
    """Where a sign-in sends the browser: `next_path` when it is one of our pages (a local
    path under /admin or /app, never another site), else the home of the role it acts as."""
    if next_path and _is_page(next_path):
        return next_path
    return "/admin/" if role.at_least(Role.OPERATOR) else "/app/"


def _is_page(path: str) -> bool:
    if len(path) > _MAX_NEXT or not path.startswith("/") or path.startswith("//"):
        return False
    if any(c == "\\" or ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        return False
    parts = urlsplit(path)
    if parts.scheme or parts.netloc:
        return False
    top = parts.path
    if top.startswith(_NOT_NEXT):
        return False
    return any(top == page or top.startswith(page + "/") for page in _PAGES)


async def authenticate_page(request: web.Request, route: Route | None) -> None:
    """The authenticator of the pages: a bearer token as the API takes it (API clients,
    tests), or the session cookie. Without either, a page's GET goes to the sign-in page (and
    back after it); anything else is a 401. A cookie request that changes something must
    come from our own pages (`check_same_origin`), and its forms carry the session's CSRF
    token (`pages.form_of` checks it)."""
    if "Authorization" in request.headers:
        await authenticate(request, route)
        return
    principal = await cookie_principal(request)
    if principal is None:
        if request.method in ("GET", "HEAD"):
            redirect = web.HTTPSeeOther(login_url(request.path_qs))
            if cookie_name(request) in request.cookies:
                clear_session_cookie(redirect, request)
            raise redirect
        raise AuthenticationError(f"sign in first: {LOGIN_PATH}")
    if request.method not in SAFE_METHODS:
        check_same_origin(request)
    assert principal.session_id is not None
    request[CSRF_TOKEN] = request.config_dict[SESSION_COOKIES].csrf(principal.session_id)
    if route is not None:
        authorize(principal, route)
    request[PRINCIPAL] = principal
    request[USER] = principal.viewer
