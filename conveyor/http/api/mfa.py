"""Routes of two-factor sign-in (TOTP): enrol, confirm, turn off, new recovery codes, and the
second step of a sign-in."""

from __future__ import annotations

from aiohttp import ChainMapProxy, web
from pydantic import BaseModel, ConfigDict, Field

from conveyor.http.api.auth import TokensOut
from conveyor.http.api.params import read_body, respond, routes
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, PRINCIPAL, THROTTLES, TOKENS, USER_CACHE
from conveyor.http.routes import Answer
from conveyor.http.runtime import run_db
from conveyor.models import Role
from conveyor.security.passwords import MAX_LENGTH as MAX_PASSWORD
from conveyor.services import mfa
from conveyor.services.sessions import Lifetimes

#: Longer than any TOTP or recovery code, with room for spaces and dashes.
MAX_CODE = 64
CODE = Field(min_length=1, max_length=MAX_CODE, description="A TOTP code or a recovery code")
PASSWORD = Field(
    None,
    max_length=MAX_PASSWORD,
    description="Your current password (required if your account has one)",
)


class EnrolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str | None = PASSWORD


class EnrolmentOut(BaseModel):
    """A pending TOTP secret: add it to an authenticator app, then confirm with a code."""

    secret: str = Field(description="The base32 secret, shown once")
    provisioning_uri: str = Field(description="The `otpauth://` URI (for a QR code)")


class CodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = CODE


class DisableIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str | None = PASSWORD
    code: str = CODE


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str] = Field(
        description="Single-use codes that stand in for a TOTP code; shown once"
    )


class MfaEnabledOut(TokensOut, RecoveryCodesOut):
    """MFA is on. The tokens are of a new session that counts the second factor (an admin
    who must use one acts as admin with them at once); the recovery codes are shown once."""


class MfaLoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mfa_token: str = Field(
        min_length=1, max_length=200, description="The `mfa_token` of the sign-in's challenge"
    )
    code: str = CODE


def checker_of(state: ChainMapProxy) -> mfa.Checker:
    """What checks second factors, with the app's attempt limits."""
    container = state[CONTAINER]
    throttles = state[THROTTLES]
    return mfa.Checker(
        mfa.sealer_of(container.settings), throttles.mfa, container.submissions, throttles.login_ip
    )


@routes.post(
    "/me/mfa/totp",
    role=Role.MEMBER,
    summary="Start enrolling a TOTP authenticator",
    body=EnrolIn,
    answers={200: Answer("The pending secret (shown once)", EnrolmentOut)},
    errors={
        403: "An account without a password, signed in over 10 minutes ago: sign in again",
        409: "Two-factor sign-in is already on",
        422: "A missing or wrong password",
        429: "Too many attempts",
    },
)
async def begin_totp(request: web.Request) -> web.Response:
    """Make a new TOTP secret for the caller (replacing a pending one); two-factor sign-in is
    on once a code of it is confirmed. Needs the current password or, for an account
    without one, a sign-in of the last 10 minutes."""
    body = await read_body(request, EnrolIn)
    state = request.config_dict
    enrolment = await run_db(
        state,
        mfa.begin_enrolment,
        checker_of(state),
        request[PRINCIPAL].user.id,
        password=body.password,
        session_id=request[PRINCIPAL].session_id,
        issuer=state[CONTAINER].settings.mfa_issuer,
    )
    return respond(EnrolmentOut(**vars(enrolment)))


@routes.post(
    "/me/mfa/totp/confirm",
    role=Role.MEMBER,
    summary="Confirm the TOTP enrolment: two-factor sign-in is on",
    body=CodeIn,
    answers={200: Answer("MFA is on: new tokens and recovery codes", MfaEnabledOut)},
    errors={
        409: "No enrolment under way, or MFA already on",
        422: "A wrong code",
        429: "Too many attempts",
    },
)
async def confirm_totp(request: web.Request) -> web.Response:
    """Turn two-factor sign-in on with a code of the pending secret. Answers recovery codes
    and the tokens of a new session that counts the second factor."""
    body = await read_body(request, CodeIn)
    state = request.config_dict
    principal = request[PRINCIPAL]
    enabled = await run_db(
        state,
        mfa.confirm_enrolment,
        checker_of(state),
        state[TOKENS].config,
        Lifetimes.of(state[CONTAINER].settings),
        principal.user.id,
        body.code,
        amr=principal.amr,
        client=client_of(request),
    )
    state[USER_CACHE].drop(principal.user.id)
    return respond(
        MfaEnabledOut(
            **TokensOut.of(enabled.tokens).model_dump(), recovery_codes=enabled.recovery_codes
        )
    )


@routes.route(
    "DELETE",
    "/me/mfa",
    role=Role.MEMBER,
    summary="Turn two-factor sign-in off",
    body=DisableIn,
    answers={204: Answer("Off: the secret and recovery codes are deleted", content_type=None)},
    errors={
        403: "An account without a password, signed in over 10 minutes ago: sign in again",
        409: "Two-factor sign-in is not on",
        422: "A wrong code, or a missing or wrong password",
        429: "Too many attempts",
    },
)
async def disable_mfa(request: web.Request) -> web.Response:
    """Turn two-factor sign-in off, with a current code and the password. A role that must
    use a second factor (CONVEYOR_MFA_REQUIRED_ROLES) then acts as a member."""
    body = await read_body(request, DisableIn)
    state = request.config_dict
    principal = request[PRINCIPAL]
    user_id = principal.user.id
    await run_db(
        state,
        mfa.disable,
        checker_of(state),
        user_id,
        password=body.password,
        session_id=principal.session_id,
        code=body.code,
        client=client_of(request),
    )
    state[USER_CACHE].drop(user_id)
    return web.Response(status=204)


@routes.post(
    "/me/mfa/recovery-codes",
    role=Role.MEMBER,
    summary="Replace the recovery codes",
    body=CodeIn,
    answers={
        200: Answer("The new codes (shown once; the old ones stop working)", RecoveryCodesOut)
    },
    errors={
        403: "An account without a password, signed in over 10 minutes ago: sign in again",
        409: "Two-factor sign-in is not on",
        422: "A wrong code",
        429: "Too many attempts",
    },
)
async def regenerate_recovery_codes(request: web.Request) -> web.Response:
    """New recovery codes, with a current code; the old ones stop working."""
    body = await read_body(request, CodeIn)
    state = request.config_dict
    codes = await run_db(
        state,
        mfa.regenerate_recovery_codes,
        checker_of(state),
        request[PRINCIPAL].user.id,
        body.code,
        session_id=request[PRINCIPAL].session_id,
        client=client_of(request),
    )
    return respond(RecoveryCodesOut(recovery_codes=codes))


@routes.post(
    "/auth/login/mfa",
    public=True,
    summary="Finish a sign-in with a second factor",
    body=MfaLoginIn,
    answers={200: Answer("The session's tokens", TokensOut)},
    errors={
        401: "An unknown, used or expired mfa_token, or a wrong code",
        429: "Too many attempts for the account (the mfa_token is used up: sign in again), "
        "or from the client address",
    },
)
async def login_mfa(request: web.Request) -> web.Response:
    """The second step of a sign-in that answered `mfa_required`: its `mfa_token` (single
    use, 5 minutes) and a TOTP or recovery code. A wrong code may be retried with the same
    token, up to the account's attempt limit."""
    body = await read_body(request, MfaLoginIn)
    state = request.config_dict
    tokens = await run_db(
        state,
        mfa.finish_sign_in,
        checker_of(state),
        state[TOKENS].config,
        Lifetimes.of(state[CONTAINER].settings),
        body.mfa_token,
        body.code,
        client=client_of(request),
    )
    return respond(TokensOut.of(tokens))
