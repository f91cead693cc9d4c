"""Routes of OpenID Connect login: the providers to offer, a login's start (off to the
provider) and its callback (back with a code, signed in here).

A browser follows them: `start` redirects it to the provider, the provider back to `callback`
under `CONVEYOR_PUBLIC_URL`. The callback answers the tokens as JSON, or, for a login started
with `return_to`, redirects there with them in the URL's fragment (which the browser never
sends to a server)."""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from aiohttp import web
from pydantic import BaseModel, Field

from conveyor.errors import BadRequestError, InvalidRequestError, NotFoundError
from conveyor.http.api.auth import TokensOut, sign_in_answer
from conveyor.http.api.params import respond, routes
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, OIDC, TOKENS
from conveyor.http.routes import Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.security import oidc
from conveyor.services import oidc_login
from conveyor.services.sessions import Lifetimes
from conveyor.settings import Settings

#: The longest `return_to` accepted, and the most of a provider's error echoed back.
MAX_RETURN_TO = 2048
MAX_PROVIDER_ERROR = 200

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
    "Where the browser goes once signed in: a URL under CONVEYOR_PUBLIC_URL, without a "
    "#fragment. The tokens (or the MFA token) follow in the fragment. Left out: the callback "
    "answers JSON.",
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
            headers={"Location": "The provider's authorization URL"},
        )
    },
    errors={
        404: "No such provider",
        422: "A `return_to` not under CONVEYOR_PUBLIC_URL",
        502: "The provider's discovery document is wrong",
        503: "The provider cannot be reached",
    },
)
async def start_login(request: web.Request) -> web.Response:
    """Send the browser to the provider, with a new state, nonce and PKCE challenge; the
    login must come back to the callback within 10 minutes."""
    settings: Settings = request.config_dict[CONTAINER].settings
    provider = _provider(settings, request)
    return_to = _return_to(settings, request.query.get("return_to"))
    discovery = await request.config_dict[OIDC].discovery(provider)
    url, login = oidc.begin(provider, discovery, callback_url(settings, provider.name))
    await run_db(request.config_dict, oidc_login.save, login, return_to=return_to)
    return web.Response(status=302, headers={"Location": url})


@routes.get(
    "/auth/oidc/{provider}/callback",
    public=True,
    summary="Finish a login with an OpenID Connect provider",
    parameters=[PROVIDER, *CALLBACK_QUERY],
    answers={
        200: Answer("Signed in: the tokens, or a second factor to send", TokensOut),
        303: Answer(
            "A login started with `return_to`: there, with the tokens in the fragment",
            content_type=None,
            headers={
                "Location": "`return_to#access_token=…&token_type=Bearer&expires_in=…&"
                "refresh_token=…&session_id=…`, or `return_to#mfa_required=true&mfa_token=…&…`"
            },
        ),
    },
    errors={
        400: "The provider refused the login (`error`), or the state is unknown, expired, "
        "used or another provider's",
        401: "The provider refused the code, or its ID token is wrong (the reason is given), "
        "or it did not verify the email address of an account not yet linked",
        403: "The account is disabled, or registration is closed",
        404: "No such provider",
        409: "An account has the address but never verified it",
        422: "No `code` or `state`",
        502: "The provider answered something unusable",
        503: "The provider cannot be reached",
    },
)
async def finish_login(request: web.Request) -> web.Response:
    """The provider's redirect back: the state is used up, the code exchanged for an ID token
    and verified, and the account it names signed in (linked by a verified email address, or
    created if registration is open). A user with MFA gets the second step's challenge."""
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
    pending = await run_db(state, oidc_login.claim, provider.name, query["state"])
    login = oidc.LoginState(
        provider=provider.name,
        state=query["state"],
        nonce=pending.nonce,
        verifier=pending.verifier,
        redirect_uri=callback_url(settings, provider.name),
    )
    identity = await state[OIDC].finish(provider, login, query["code"])
    result = await run_db(
        state,
        oidc_login.sign_in,
        state[TOKENS].config,
        Lifetimes.of(settings),
        provider.name,
        identity,
        registration=settings.registration,
        client=client_of(request),
    )
    answer = sign_in_answer(result)
    if pending.return_to is None:
        return respond(answer)
    fragment = urlencode(answer.model_dump(mode="json"))
    return web.Response(status=303, headers={"Location": f"{pending.return_to}#{fragment}"})


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


def callback_url(settings: Settings, provider: str) -> str:
    """Where `provider` sends the browser back: the URL to register with it."""
    return f"{_public_url(settings)}/v1/auth/oidc/{provider}/callback"


def _return_to(settings: Settings, value: str | None) -> str | None:
    """`return_to` if it is a URL under CONVEYOR_PUBLIC_URL: the tokens go there, so it must
    be ours, not anyone's (an open redirect would hand them to another site)."""
    if value is None:
        return None
    base = urlsplit(_public_url(settings))
    target = urlsplit(value)
    prefix = base.path.rstrip("/") + "/"
    if (
        len(value) <= MAX_RETURN_TO
        and value.isprintable()
        and " " not in value
        and "\\" not in value
        and (target.scheme, target.netloc.lower()) == (base.scheme, base.netloc.lower())
        and (target.path + "/").startswith(prefix)
        and "#" not in value
    ):
        return value
    message = f"a URL under {_public_url(settings)} (CONVEYOR_PUBLIC_URL), without a #fragment"
    raise InvalidRequestError(
        f"return_to must be {message}", errors=[{"field": "return_to", "message": message}]
    )
