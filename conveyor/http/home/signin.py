"""The sign-in pages of the dashboard and the user's pages: the password form, the second step
for an account with MFA, and signing out.

A sign-in here is the API's (`POST /v1/auth/login`): the same attempt limits, audit events,
"new sign-in" notice and answers; it ends in a session cookie rather than tokens. The forms
of a browser with no session yet are guarded by a double-submit token: a random value in a
cookie that only this site's pages can read back into the form."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from conveyor.errors import (
    AuthenticationError,
    InvalidTokenError,
    PermissionDeniedError,
    TooManyRequestsError,
)
from conveyor.http.api.mfa import checker_of
from conveyor.http.auth import acting_role, active_user, client_of
from conveyor.http.browser_session import (
    LOGIN_PATH,
    check_same_origin,
    clear_session_cookie,
    cookie_principal,
    is_secure,
    landing,
    set_session_cookie,
)
from conveyor.http.home import routes
from conveyor.http.keys import CONTAINER, PRINCIPAL, SESSION_CACHE, THROTTLES, TOKENS
from conveyor.http.pages import CSRF_TOKEN, form_of, render, text_field
from conveyor.http.routes import HTML, Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import Role
from conveyor.security.passwords import MAX_LENGTH as MAX_PASSWORD
from conveyor.services import mfa, sessions, sign_in, sign_in_links
from conveyor.services.sessions import Lifetimes, MfaChallenge, Tokens

#: The double-submit token of the sign-in forms (a browser with no session yet).
LOGIN_CSRF_COOKIE = "conveyor_login_csrf"
#: The challenge of a sign-in's second step, between the two forms.
MFA_COOKIE = "conveyor_mfa"
MFA_PATH = "/app/login/mfa"
MAX_EMAIL = 320
MAX_CODE = 64
#: Fixed messages the sign-in page shows for `?done=<key>` (never text from the URL).
NOTICES = {"signed_out": "You are signed out."}
SIGN_IN_FAILURES = (AuthenticationError, PermissionDeniedError, TooManyRequestsError)

_PAGE = {200: Answer("The page", content_type=HTML, schema={"type": "string"})}
_SEE_OTHER = {303: Answer("On to the next page", content_type=None)}
NEXT = Parameter(
    "next",
    "query",
    {"type": "string", "maxLength": 2000},
    "The page to go on to after signing in (a path under /admin or /app)",
)
DONE = Parameter("done", "query", {"type": "string", "enum": sorted(NOTICES)}, "What just happened")

Form = MultiDictProxy[str | bytes | bytearray | web.FileField]


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _set_private_cookie(
    response: web.StreamResponse,
    request: web.Request,
    name: str,
    value: str,
    *,
    path: str,
    max_age: int | None = None,
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        secure=is_secure(request),
        httponly=True,
        samesite="Strict",
    )


def _login_token(request: web.Request) -> str:
    """The browser's double-submit token (a new one if it has none): the forms carry it."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not (20 <= len(token) <= 64 and token.isascii()):
        token = secrets.token_urlsafe(32)
    request[CSRF_TOKEN] = token
    return token


def _form_page(
    request: web.Request,
    template: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: object,
) -> web.Response:
    """A sign-in form, with the browser's double-submit token in a cookie and in the form."""
    token = _login_token(request)
    response = render(request, template, status=status, headers=headers, **context)
    _set_private_cookie(response, request, LOGIN_CSRF_COOKIE, token, path=LOGIN_PATH)
    return response


async def _login_form_of(request: web.Request) -> Form:
    """The posted sign-in form, if this site's page sent it: from our origin, with the
    cookie's double-submit token in the form (403 otherwise)."""
    check_same_origin(request)
    token = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not token:
        raise PermissionDeniedError(
            "the sign-in form's security token is missing: reload the page and send it again"
        )
    request[CSRF_TOKEN] = token
    return await form_of(request)


def _login_page(
    request: web.Request,
    *,
    next_path: str,
    email: str = "",
    error: str | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    notice: str | None = None,
) -> web.Response:
    return _form_page(
        request,
        "app/login.html",
        status=status,
        headers=headers,
        title="Sign in",
        next=next_path,
        email=email,
        error=error,
        notice=notice,
    )


@routes.get(
    "/login",
    name="login_page",
    public=True,
    answers=_PAGE,
    parameters=(NEXT, DONE),
)
async def login_page(request: web.Request) -> web.Response:
    """The sign-in form (a browser signed in already goes on to the page asked for)."""
    next_path = request.query.get("next", "")[:2000]
    principal = await cookie_principal(request)
    if principal is not None:
        return _see_other(landing(next_path, principal.role))
    done = request.query.get("done", "")
    return _login_page(request, next_path=next_path, notice=NOTICES.get(done))


@routes.post(
    "/login",
    name="login_form_post",
    public=True,
    answers={**_SEE_OTHER, 200: _PAGE[200]},
    errors={
        401: "Wrong email or password (the form again)",
        403: "An unverified address (the form again), or a form not sent by this site",
        422: "A missing email address or password (the form again)",
        429: "Too many attempts (the form again)",
    },
)
async def login(request: web.Request) -> web.Response:
    """Sign in with an email address and password: on to the page asked for, signed in, or
    to the second step for an account with MFA."""
    form = await _login_form_of(request)
    email, next_path = text_field(form, "email"), text_field(form, "next")[:2000]
    password = form.get("password")
    if not email or not isinstance(password, str) or not password:
        return _login_page(
            request,
            next_path=next_path,
            email=email[:MAX_EMAIL],
            error="Enter your email address and password.",
            status=422,
        )
    if len(email) > MAX_EMAIL or len(password) > 4 * MAX_PASSWORD:
        error = _sentence(sign_in.WRONG_CREDENTIALS)
        return _login_page(request, next_path=next_path, error=error, status=401)
    state = request.config_dict
    container = state[CONTAINER]
    try:
        result = await run_db(
            state,
            sign_in.login,
            container.submissions,
            state[TOKENS].config,
            Lifetimes.of(container.settings),
            state[THROTTLES],
            email,
            password,
            client=client_of(request),
        )
    except SIGN_IN_FAILURES as exc:
        return _login_page(
            request,
            next_path=next_path,
            email=email,
            error=_sentence(exc.detail),
            status=exc.status,
            headers=exc.headers,
        )
    if isinstance(result, MfaChallenge):
        response = _see_other(f"{MFA_PATH}?{urlencode({'next': next_path})}")
        _set_private_cookie(
            response,
            request,
            MFA_COOKIE,
            result.mfa_token,
            path=MFA_PATH,
            max_age=result.expires_in,
        )
        return response
    return await _signed_in(request, result, ("pwd",), next_path)


def _sentence(detail: str) -> str:
    return detail[:1].upper() + detail[1:] + ("" if detail.endswith(".") else ".")


async def _signed_in(
    request: web.Request, tokens: Tokens, amr: tuple[str, ...], next_path: str
) -> web.Response:
    """On to `next_path` (or the home of the role the user acts as), with the cookie of the
    new session. Its refresh token is never handed out: the cookie alone names the session."""
    user = await active_user(request, tokens.user_id)
    role = acting_role(request.config_dict[CONTAINER].settings, user, amr)
    response = _see_other(landing(next_path, role))
    set_session_cookie(response, request, tokens.session_id)
    return response


def _mfa_page(
    request: web.Request,
    *,
    next_path: str,
    error: str | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    restart = f"{LOGIN_PATH}?{urlencode({'next': next_path})}" if next_path else LOGIN_PATH
    return _form_page(
        request,
        "app/login_mfa.html",
        status=status,
        headers=headers,
        title="Enter your code",
        next=next_path,
        error=error,
        restart=restart,
    )


@routes.get(
    "/login/mfa",
    name="login_mfa_page",
    public=True,
    answers={**_PAGE, **_SEE_OTHER},
    parameters=(NEXT,),
)
async def login_mfa_page(request: web.Request) -> web.Response:
    """The second step of a sign-in: a code of the authenticator app or a recovery code
    (without a sign-in under way, back to the first step)."""
    next_path = request.query.get("next", "")[:2000]
    if not request.cookies.get(MFA_COOKIE):
        return _see_other(f"{LOGIN_PATH}?{urlencode({'next': next_path})}")
    return _mfa_page(request, next_path=next_path)


@routes.post(
    "/login/mfa",
    name="login_mfa_post",
    public=True,
    answers={**_SEE_OTHER, 200: _PAGE[200]},
    errors={
        401: "A wrong code, or a sign-in that expired (the form again)",
        403: "A form not sent by this site",
        422: "No code (the form again)",
        429: "Too many attempts (the form again)",
    },
)
async def login_mfa(request: web.Request) -> web.Response:
    """Finish a sign-in with a TOTP or recovery code: on to the page asked for, signed in."""
    form = await _login_form_of(request)
    code, next_path = text_field(form, "code"), text_field(form, "next")[:2000]
    challenge = request.cookies.get(MFA_COOKIE)
    if not challenge:
        return _see_other(f"{LOGIN_PATH}?{urlencode({'next': next_path})}")
    if not code or len(code) > MAX_CODE:
        return _mfa_page(request, next_path=next_path, error="Enter your code.", status=422)
    state = request.config_dict
    try:
        tokens = await run_db(
            state,
            mfa.finish_sign_in,
            checker_of(state),
            state[TOKENS].config,
            Lifetimes.of(state[CONTAINER].settings),
            challenge,
            code,
            client=client_of(request),
        )
    except SIGN_IN_FAILURES as exc:
        return _mfa_page(
            request,
            next_path=next_path,
            error=_sentence(exc.detail),
            status=exc.status,
            headers=exc.headers,
        )
    response = await _signed_in(request, tokens, ("pwd", mfa.OTP), next_path)
    response.del_cookie(MFA_COOKIE, path=MFA_PATH)
    return response


LINK_TOKEN = Parameter(
    "token",
    "query",
    {"type": "string", "maxLength": 100},
    "The token of a sign-in link (`conveyor dev` prints one)",
)
MAX_LINK_TOKEN = 100


@routes.get(
    "/login/link",
    name="login_link_page",
    public=True,
    answers=_PAGE,
    parameters=(LINK_TOKEN,),
)
async def login_link_page(request: web.Request) -> web.Response:
    """A sign-in link's page: a button that uses the link. Opening the page uses nothing, so
    a link preview or a prefetch cannot spend it."""
    token = request.query.get("token", "")
    if len(token) > MAX_LINK_TOKEN:
        token = ""
    return _form_page(request, "app/login_link.html", title="Sign in", token=token, error=None)


@routes.post(
    "/login/link",
    name="login_link",
    public=True,
    answers={**_SEE_OTHER, 200: _PAGE[200]},
    errors={
        401: "An unknown, used or expired link (the page again)",
        403: "A form not sent by this site",
    },
)
async def login_link(request: web.Request) -> web.Response:
    """Sign in with a sign-in link made on the server: on to the dashboard (or the user's
    page), signed in."""
    form = await _login_form_of(request)
    token = text_field(form, "token")
    state = request.config_dict
    try:
        if not token or len(token) > MAX_LINK_TOKEN:
            raise InvalidTokenError("this sign-in link is unknown, used or expired")
        tokens = await run_db(
            state,
            sign_in_links.redeem,
            state[TOKENS].config,
            Lifetimes.of(state[CONTAINER].settings),
            token,
            client=client_of(request),
        )
    except InvalidTokenError as exc:
        return _form_page(
            request,
            "app/login_link.html",
            status=exc.status,
            title="Sign in",
            token="",
            error=_sentence(exc.detail),
        )
    return await _signed_in(request, tokens, sign_in_links.AMR, "")


@routes.post(
    "/logout",
    name="logout_page",
    role=Role.MEMBER,
    answers=_SEE_OTHER,
    errors={403: "A form without its security token, or not sent by this site"},
)
async def logout(request: web.Request) -> web.Response:
    """Sign out: the session ends (its cookie and tokens stop working) and the browser
    forgets the cookie."""
    await form_of(request)
    principal = request[PRINCIPAL]
    state = request.config_dict
    if principal.session_id is not None:
        await run_db(
            state,
            sessions.logout,
            principal.user.id,
            {principal.session_id},
            client=client_of(request),
        )
        state[SESSION_CACHE].drop(principal.session_id)
    response = _see_other(f"{LOGIN_PATH}?done=signed_out")
    clear_session_cookie(response, request)
    return response
