"""Routes of accounts: register, verify the email address, sign in, and reset a forgotten
password. All public; none tells whether an address has an account.

The emails link to the front end with the token in the URL's fragment
(`{CONVEYOR_PUBLIC_URL}/verify-email#token=...`, `/reset-password#token=...`): browsers do not
send a fragment to servers, so no log sees it. The page reads it and POSTs it here."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Literal

from aiohttp import ChainMapProxy, web
from pydantic import BaseModel, ConfigDict, Field

from conveyor.errors import PermissionDeniedError
from conveyor.http.api.params import read_body, respond, routes
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, SESSION_CACHE, THROTTLES, TOKENS, USER_CACHE
from conveyor.http.routes import Answer
from conveyor.http.runtime import run_db
from conveyor.security.passwords import MAX_LENGTH
from conveyor.services import accounts, sign_in
from conveyor.services.sessions import Lifetimes, MfaChallenge, Tokens

#: Longer than any password allowed, so a long one gets the rule's message, not a schema's.
PASSWORD = Field(min_length=1, max_length=4 * MAX_LENGTH)
_EMAIL = Field(min_length=3, max_length=320, examples=["ada@example.com"])
_TOKEN = Field(min_length=1, max_length=200, description="The token of the email's link")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterIn(Strict):
    """A new account: its address, password (8 to 256 characters, not a common one) and
    an optional display name."""

    email: str = _EMAIL
    password: str = PASSWORD
    name: str | None = Field(None, max_length=200)


class EmailIn(Strict):
    email: str = _EMAIL


class TokenIn(Strict):
    token: str = _TOKEN


class LoginIn(Strict):
    email: str = _EMAIL
    password: str = PASSWORD


class ResetIn(Strict):
    token: str = _TOKEN
    new_password: str = PASSWORD


class AcceptedOut(BaseModel):
    """The same answer whatever the address: it tells nothing about accounts."""

    status: Literal["accepted"] = "accepted"
    detail: str


class TokensOut(BaseModel):
    """A session's tokens (RFC 6749 §5.1): send `access_token` as `Authorization: Bearer`;
    trade `refresh_token` for new tokens at `POST /v1/auth/refresh` (it works once). Shown
    this once."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="Seconds the access token lives")
    refresh_token: str = Field(description="Good once: `POST /v1/auth/refresh` gives new ones")
    session_id: uuid.UUID

    @classmethod
    def of(cls, tokens: Tokens) -> TokensOut:
        return cls(
            access_token=tokens.access_token,
            expires_in=tokens.expires_in,
            refresh_token=tokens.refresh_token,
            session_id=tokens.session_id,
        )


class MfaChallengeOut(BaseModel):
    """The first factor was right; finish with `POST /v1/auth/login/mfa`, sending
    `mfa_token` and a TOTP or recovery code."""

    mfa_required: Literal[True] = True
    mfa_token: str
    expires_in: int = Field(description="Seconds the second step may wait")
    methods: list[str]

    @classmethod
    def of(cls, challenge: MfaChallenge) -> MfaChallengeOut:
        return cls(
            mfa_token=challenge.mfa_token,
            expires_in=challenge.expires_in,
            methods=list(challenge.methods),
        )


def sign_in_answer(result: Tokens | MfaChallenge) -> TokensOut | MfaChallengeOut:
    """What a sign-in answers: its tokens, or the challenge of its second step."""
    if isinstance(result, MfaChallenge):
        return MfaChallengeOut.of(result)
    return TokensOut.of(result)


def signed_in(result: Tokens | MfaChallenge) -> web.Response:
    """The answer of a sign-in, as JSON."""
    return respond(sign_in_answer(result))


def forget_sign_ins(state: ChainMapProxy, changed: accounts.PasswordSet) -> None:
    """Make this process refuse at once what a password change ended: the sessions' tokens,
    and (with the account's new state) tokens issued before a reset."""
    for session_id in changed.ended:
        state[SESSION_CACHE].drop(session_id)
    state[USER_CACHE].drop(changed.user_id)


#: A request that emails an address if it has an account: `accounts.request_reset` or
#: `accounts.resend_verification` (db, submissions, throttles, email, *, client).
EmailRequest = Callable[..., None]

CHECK_EMAIL = AcceptedOut(
    detail="If this address can receive it, an email is on its way: follow its link."
)
_ACCEPTED = {202: Answer("Accepted (the same answer for every address)", AcceptedOut)}


@routes.post(
    "/auth/register",
    public=True,
    summary="Create an account",
    body=RegisterIn,
    answers=_ACCEPTED,
    errors={
        400: "Malformed JSON",
        403: "Registration is closed (CONVEYOR_REGISTRATION)",
        422: "A bad address, or a password that breaks a rule (named)",
        429: "Too many requests from this client address (CONVEYOR_RESET_RATE)",
    },
)
async def register(request: web.Request) -> web.Response:
    """Create an account, unverified until its owner opens the link emailed to it. For an
    address that has an account, that account's owner is told by email instead; the answer
    is the same. Registrations share the limits of reset requests: past the client address's,
    a 429; past the email address's, the request is dropped, with the same answer."""
    state = request.config_dict
    container = state[CONTAINER]
    if container.settings.registration == "closed":
        raise PermissionDeniedError("registration is closed: ask an administrator")
    body = await read_body(request, RegisterIn)
    await run_db(
        state,
        accounts.register,
        container.submissions,
        state[THROTTLES],
        body.email,
        body.password,
        body.name,
        client=client_of(request),
    )
    return respond(CHECK_EMAIL, 202)


@routes.post(
    "/auth/verify-email",
    public=True,
    summary="Confirm an email address",
    body=TokenIn,
    answers={204: Answer("Verified: the account may sign in", content_type=None)},
    errors={400: "Malformed JSON", 422: "An unknown, used or expired token (said which)"},
)
async def verify_email(request: web.Request) -> web.Response:
    """Confirm the address with the token of the verification email (it works once)."""
    body = await read_body(request, TokenIn)
    await run_db(request.config_dict, accounts.verify_email, body.token, client=client_of(request))
    return web.Response(status=204)


@routes.post(
    "/auth/verify-email/resend",
    public=True,
    summary="Send the verification email again",
    body=EmailIn,
    answers=_ACCEPTED,
    errors={
        400: "Malformed JSON",
        422: "Not an email address",
        429: "Too many requests from this client address",
    },
)
async def resend_verification(request: web.Request) -> web.Response:
    """Send an unverified account a new verification link (earlier ones stop working)."""
    return await _email_request(request, accounts.resend_verification)


@routes.post(
    "/auth/login",
    public=True,
    summary="Sign in with an email address and password",
    body=LoginIn,
    answers={
        200: Answer(
            "Signed in; or, for an account with MFA, `{mfa_required, mfa_token, expires_in, "
            "methods}`: finish with POST /v1/auth/login/mfa",
            TokensOut,
        )
    },
    errors={
        400: "Malformed JSON",
        401: "Wrong email or password (or a disabled account: the same answer)",
        403: "The email address is not verified yet",
        422: "Not an email address",
        429: "Too many failed sign-ins for the account, or attempts from the client address",
    },
)
async def login(request: web.Request) -> web.Response:
    """Sign in: a session's tokens, or the challenge of the second step."""
    state = request.config_dict
    container = state[CONTAINER]
    body = await read_body(request, LoginIn)
    result = await run_db(
        state,
        sign_in.login,
        container.submissions,
        state[TOKENS].config,
        Lifetimes.of(container.settings),
        state[THROTTLES],
        body.email,
        body.password,
        client=client_of(request),
    )
    return signed_in(result)


@routes.post(
    "/auth/password-reset",
    public=True,
    summary="Ask for a password reset link",
    body=EmailIn,
    answers=_ACCEPTED,
    errors={
        400: "Malformed JSON",
        422: "Not an email address",
        429: "Too many requests from this client address",
    },
)
async def request_password_reset(request: web.Request) -> web.Response:
    """Email the account of the address a reset link (30 minutes, single use), if it has
    one; the answer is the same either way."""
    return await _email_request(request, accounts.request_reset)


async def _email_request(request: web.Request, service: EmailRequest) -> web.Response:
    """Run `service` (a request that emails an address, if it has an account) and answer
    202 "check your email", the same for every address."""
    state = request.config_dict
    body = await read_body(request, EmailIn)
    await run_db(
        state,
        service,
        state[CONTAINER].submissions,
        state[THROTTLES],
        body.email,
        client=client_of(request),
    )
    return respond(CHECK_EMAIL, 202)


@routes.post(
    "/auth/password-reset/confirm",
    public=True,
    summary="Choose a new password with a reset link's token",
    body=ResetIn,
    answers={204: Answer("Done: every session of the account is ended", content_type=None)},
    errors={
        400: "Malformed JSON",
        422: "An unknown, used or expired token, or a password that breaks a rule",
    },
)
async def confirm_password_reset(request: web.Request) -> web.Response:
    """Set the new password; every session and access token of the account ends, the address
    counts as verified, and the owner gets a notice."""
    state = request.config_dict
    body = await read_body(request, ResetIn)
    changed = await run_db(
        state,
        accounts.reset_password,
        state[CONTAINER].submissions,
        body.token,
        body.new_password,
        client=client_of(request),
    )
    forget_sign_ins(state, changed)
    return web.Response(status=204)
