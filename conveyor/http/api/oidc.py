"""Routes of OpenID Connect login: the providers to offer, a login's start (off to the
provider), its callback (back with a code, signed in here) and the trade of a login code.

A browser follows them: `start` redirects it to the provider, with a cookie binding the login
to this browser; the provider sends it back to `callback` under `CONVEYOR_PUBLIC_URL`, which
refuses it without that cookie. The callback answers the tokens as JSON, or, for a login
started with `return_to`, redirects there with a one-time login code in the URL's fragment
(which the browser never sends to a server): the page trades it for the tokens with
`POST /v1/auth/oidc/exchange`, so no token lands in the browser's history."""

from __future__ import annotations

import posixpath
import secrets
from urllib.parse import SplitResult, unquote, urlencode, urlsplit

from aiohttp import web
from pydantic import BaseModel, Field

from conveyor.errors import BadRequestError, InvalidRequestError, NotFoundError
from conveyor.http.api.auth import Strict, TokensOut, sign_in_answer, signed_in
from conveyor.http.api.params import respond, routes
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, OIDC, THROTTLES, TOKENS
from conveyor.http.routes import Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.security import oidc
from conveyor.services import oidc_login
from conveyor.services.sessions import Lifetimes
from conveyor.settings import Settings

#: The longest `return_to` accepted, and the most of a provider's error echoed back.
MAX_RETURN_TO = 2048
MAX_PROVIDER_ERROR = 200
#: Paths under CONVEYOR_PUBLIC_URL no login returns to: the server's own routes, one of which
#: could redirect on with the fragment (and its login code).
SERVER_PATHS = ("/v1", "/admin")
#: The cookie that binds a login to the browser that started it, and its life (the login's).
COOKIE = "conveyor-oidc"
COOKIE_MAX_AGE = int(oidc_login.LOGIN_TTL.total_seconds())

PROVIDER = Parameter(
    "provider",
    "path",
    {"type": "string", "pattern": f"^{oidc.PROVIDER_NAME.pattern}$"},
    "A provider's name, as configured in CONVEYOR_OIDC_PROVIDERS",
    required=True,
)
RETURN_TO = Parameter(
    "return_to",
    "query",
    {"type": "string", "format": "uri", "maxLength": MAX_RETURN_TO},
    "Where the browser goes once signed in: a URL under CONVEYOR_PUBLIC_URL (not under its "
    "/v1 or /admin), without a #fragment. A one-time `login_code` follows in the fragment, "
    "for POST /v1/auth/oidc/exchange. Left out: the callback answers JSON.",
)


def _query(name: str, description: str) -> Parameter:
    return Parameter(name, "query", {"type": "string"}, description)


CALLBACK_QUERY = [
    _query("code", "The authorization code (on success)"),
    _query("state", "The login's state, as `start` sent it"),
    _query("error", "The provider's reason for refusing the login (RFC 6749 4.1.2.1)"),
    _query("error_description", "The provider's explanation of `error`"),
    _query("error_uri", "A page of the provider about `error`"),
    # What providers add beside (RFC 9207, OpenID Session Management, Google): not used.
    *(
        _query(name, "Sent by some providers; not used")
        for name in ("iss", "session_state", "scope", "authuser", "prompt", "hd")
    ),
]


class ExchangeIn(Strict):
    """The login code of a callback's redirect to `return_to`."""

    login_code: str = Field(min_length=1, max_length=200, examples=["cvo_…"])


class ProvidersOut(BaseModel):
    """The providers users may log in with, by name, for a UI's buttons."""

    providers: list[str] = Field(examples=[["corp", "google"]])


@routes.get(
    "/auth/oidc/providers",
    public=True,
    summary="List the OpenID Connect providers",
    answers={200: Answer("Their names", ProvidersOut)},
)
async def list_providers(request: web.Request) -> web.Response:
    """The names of the providers users may log in with (none: OIDC login is off)."""
    settings: Settings = request.config_dict[CONTAINER].settings
    return respond(ProvidersOut(providers=sorted(settings.oidc_providers or {})))


@routes.get(
    "/auth/oidc/{provider}/start",
    public=True,
    summary="Start a login with an OpenID Connect provider",
    parameters=[PROVIDER, RETURN_TO],
    answers={
        302: Answer(
            "To the provider's login page",
            content_type=None,
            headers={
                "Location": "The provider's authorization URL",
                "Set-Cookie": "`__Host-conveyor-oidc` (`conveyor-oidc` without https), "
                "binding the login to this browser",
            },
        )
    },
    errors={
        404: "No such provider",
        422: "A `return_to` not under CONVEYOR_PUBLIC_URL, or under its /v1 or /admin",
        429: "Too many sign-in attempts from this client address",
        502: "The provider's discovery document is wrong",
        503: "The provider cannot be reached",
    },
)
async def start_login(request: web.Request) -> web.Response:
    """Send the browser to the provider, with a new state, nonce and PKCE challenge, and a
    cookie that only this browser sends back; the login must come back to the callback within
    10 minutes. Starts count as sign-in attempts of the client address."""
    state = request.config_dict
    settings: Settings = state[CONTAINER].settings
    provider = _provider(settings, request)
    return_to = _return_to(settings, request.query.get("return_to"))
    discovery = await state[OIDC].discovery(provider)
    url, login = oidc.begin(provider, discovery, callback_url(settings, provider.name))
    binding = secrets.token_urlsafe(32)
    await run_db(
        state,
        oidc_login.save,
        state[THROTTLES].login_ip,
        login,
        return_to=return_to,
        binding=binding,
        client=client_of(request),
    )
    response = web.Response(status=302, headers={"Location": url})
    secure = _secure(settings)
    response.set_cookie(
        _cookie_name(settings),
        binding,
        max_age=COOKIE_MAX_AGE,
        path="/",
        secure=secure or None,
        httponly=True,
        samesite="Lax",
    )
    return response


@routes.get(
    "/auth/oidc/{provider}/callback",
    public=True,
    summary="Finish a login with an OpenID Connect provider",
    parameters=[PROVIDER, *CALLBACK_QUERY],
    answers={
        200: Answer("Signed in: the tokens, or a second factor to send", TokensOut),
        303: Answer(
            "A login started with `return_to`: there, with a one-time login code in the "
            "fragment, for POST /v1/auth/oidc/exchange",
            content_type=None,
            headers={"Location": "`return_to#login_code=cvo_…`"},
        ),
    },
    errors={
        400: "The provider refused the login (`error`), or the state is unknown, expired, "
        "used or another provider's, or this browser did not start the login (no cookie)",
        401: "The provider refused the code, or its ID token is wrong (the reason is given), "
        "or it did not verify the email address of an account not yet linked",
        403: "The account is disabled, or registration is closed",
        404: "No such provider",
        409: "An account has the address but never verified it, or the provider does not "
        "link existing accounts",
        422: "No `code` or `state`",
        502: "The provider answered something unusable",
        503: "The provider cannot be reached",
    },
)
async def finish_login(request: web.Request) -> web.Response:
    """The provider's redirect back, in the browser that started the login: the state is used
    up, the code exchanged for an ID token and verified, and the account it names signed in
    (linked by a verified email address, or created if registration is open). A user with MFA
    gets the second step's challenge. With `return_to`, the browser goes there with a login
    code instead."""
    state = request.config_dict
    settings: Settings = state[CONTAINER].settings
    provider = _provider(settings, request)
    query = request.query
    if "error" in query:
        raise _refused_by_provider(query.get("error", ""), query.get("error_description"))
    missing = [name for name in ("code", "state") if not query.get(name)]
    if missing:
        raise InvalidRequestError(
            f"the callback needs {' and '.join(missing)}",
            errors=[{"field": name, "message": "required"} for name in missing],
        )
    cookie = request.cookies.get(_cookie_name(settings))
    await run_db(state, oidc_login.check_browser, query["state"], cookie)
    pending = await run_db(state, oidc_login.claim, provider.name, query["state"])
    login = oidc.LoginState(
        provider=provider.name,
        state=query["state"],
        nonce=pending.nonce,
        verifier=pending.verifier,
        redirect_uri=callback_url(settings, provider.name),
    )
    identity = await state[OIDC].finish(provider, login, query["code"])
    submissions = state[CONTAINER].submissions
    if pending.return_to is None:
        result = await run_db(
            state,
            oidc_login.sign_in,
            submissions,
            state[TOKENS].config,
            Lifetimes.of(settings),
            provider,
            identity,
            registration=settings.registration,
            client=client_of(request),
        )
        response = respond(sign_in_answer(result))
    else:
        code = await run_db(
            state,
            oidc_login.issue_code,
            submissions,
            provider,
            identity,
            registration=settings.registration,
            client=client_of(request),
        )
        fragment = urlencode({"login_code": code})
        response = web.Response(status=303, headers={"Location": f"{pending.return_to}#{fragment}"})
    response.del_cookie(_cookie_name(settings), path="/", secure=_secure(settings) or None)
    return response


@routes.post(
    "/auth/oidc/exchange",
    public=True,
    summary="Trade an OpenID Connect login code for the session",
    body=ExchangeIn,
    answers={
        200: Answer(
            "Signed in; or, for an account with MFA, `{mfa_required, mfa_token, expires_in, "
            "methods}`: finish with POST /v1/auth/login/mfa",
            TokensOut,
        )
    },
    errors={
        401: "An unknown, used or expired login code, or an account disabled since",
        422: "No `login_code`",
    },
)
async def exchange_login_code(request: web.Request) -> web.Response:
    """The page at `return_to` trades the `login_code` of its URL's fragment (good once, for
    a minute) for the tokens, or the second step's challenge."""
    state = request.config_dict
    container = state[CONTAINER]
    body = ExchangeIn.model_validate_json(await request.read())
    result = await run_db(
        state,
        oidc_login.exchange,
        container.submissions,
        state[TOKENS].config,
        Lifetimes.of(container.settings),
        body.login_code,
        client=client_of(request),
    )
    return signed_in(result)


def _provider(settings: Settings, request: web.Request) -> oidc.ProviderConfig:
    name = request.match_info["provider"]
    provider = (settings.oidc_providers or {}).get(name)
    if provider is None:
        raise NotFoundError(f"no OpenID Connect provider {name[:32]!r} is configured")
    return provider


def _refused_by_provider(error: str, description: str | None) -> BadRequestError:
    reason = error[:MAX_PROVIDER_ERROR] or "an unnamed error"
    if description:
        reason += f": {description[:MAX_PROVIDER_ERROR]}"
    return BadRequestError(
        f"the provider refused the login ({reason})",
        errors=[{"field": "error", "message": reason}],
    )


def _public_url(settings: Settings) -> str:
    """`CONVEYOR_PUBLIC_URL` without its trailing slash (settings with providers have one)."""
    return str(settings.public_url or "").rstrip("/")


def _secure(settings: Settings) -> bool:
    return _public_url(settings).startswith("https:")


def _cookie_name(settings: Settings) -> str:
    """The binding cookie's name: `__Host-` prefixed over https, where browsers then hold it
    to this host, path / and Secure (a sibling subdomain cannot plant one)."""
    return f"__Host-{COOKIE}" if _secure(settings) else COOKIE


def callback_url(settings: Settings, provider: str) -> str:
    """Where `provider` sends the browser back: the URL to register with it."""
    return f"{_public_url(settings)}/v1/auth/oidc/{provider}/callback"


def _return_to(settings: Settings, value: str | None) -> str | None:
    """`return_to` if it is a URL under CONVEYOR_PUBLIC_URL, outside the server's own paths:
    the login code goes there, so it must be a page of ours, not anyone's (an open redirect
    would hand it to another site) nor a route that could redirect on with it."""
    if value is None:
        return None
    base = urlsplit(_public_url(settings))
    target = _split(value)
    prefix = base.path.rstrip("/") + "/"
    if (
        target is not None
        and len(value) <= MAX_RETURN_TO
        and value.isprintable()
        and " " not in value
        and "\\" not in value
        and (target.scheme, target.netloc.lower()) == (base.scheme, base.netloc.lower())
        and (target.path + "/").startswith(prefix)
        and "#" not in value
        and not _server_path(target.path, base.path)
    ):
        return value
    message = (
        f"a URL under {_public_url(settings)} (CONVEYOR_PUBLIC_URL), not under its "
        f"{' or '.join(SERVER_PATHS)}, without a #fragment"
    )
    raise InvalidRequestError(
        f"return_to must be {message}", errors=[{"field": "return_to", "message": message}]
    )


def _split(value: str) -> SplitResult | None:
    try:
        return urlsplit(value)
    except ValueError:  # a malformed host, such as `https://[abc`
        return None


def _server_path(path: str, base: str) -> bool:
    """Whether `path` leaves `base` (the public URL's path) or reaches the server's own
    routes once a browser or proxy has normalized it: percent-decoded, dot segments and
    doubled slashes resolved, in any case."""
    plain = "/" + posixpath.normpath("/" + unquote(path)).lower().lstrip("/")
    base = base.rstrip("/").lower()
    if plain != base and not plain.startswith(base + "/"):
        return True
    rest = plain[len(base) :] or "/"
    return any(rest == p or rest.startswith(p + "/") for p in SERVER_PATHS)
