"""Routes of sign-in sessions: refresh the tokens, log out, list and end my sessions."""

from __future__ import annotations

import datetime as dt
import uuid

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from conveyor.errors import InvalidRequestError, InvalidTokenError
from conveyor.http.api.auth import TokensOut
from conveyor.http.api.params import read_body, respond, routes, uuid_of
from conveyor.http.auth import client_of
from conveyor.http.keys import CONTAINER, PRINCIPAL, SESSION_CACHE, TOKENS
from conveyor.http.routes import Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import AuthSession, Role
from conveyor.services import sessions


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=200)


class LogoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Also end this refresh token's session (needed with a token of no session)",
    )


class SessionOut(BaseModel):
    """An open sign-in session."""

    id: uuid.UUID
    created_at: dt.datetime
    last_used_at: dt.datetime = Field(description="The sign-in, or the last refresh")
    expires_at: dt.datetime = Field(description="Its end, however often it is refreshed")
    ip: str | None
    user_agent: str | None
    amr: list[str] = Field(description="How the user signed in (`pwd`, `otp`, `oidc:<name>`)")
    current: bool = Field(description="The session of the token of this request")

    @classmethod
    def of(cls, s: AuthSession, current: uuid.UUID | None) -> SessionOut:
        return cls(
            id=s.id,
            created_at=s.created_at,
            last_used_at=s.last_used_at,
            expires_at=s.expires_at,
            ip=s.ip,
            user_agent=s.user_agent,
            amr=list(s.amr),
            current=s.id == current,
        )


class SessionList(BaseModel):
    items: list[SessionOut]


class EndedOut(BaseModel):
    ended: int = Field(description="How many sessions were ended")


SESSION_ID = Parameter(
    "session_id", "path", {"type": "string", "format": "uuid"}, "The session's id", required=True
)


@routes.post(
    "/auth/refresh",
    public=True,
    summary="Exchange a refresh token for new tokens",
    body=RefreshIn,
    answers={200: Answer("New tokens; the refresh token sent is used up", TokensOut)},
    errors={
        400: "Malformed JSON",
        422: "No refresh_token",
    },
)
async def refresh(request: web.Request) -> web.Response:
    """Rotate a refresh token: it is used up and a new one comes with a new access token. A
    refresh token used a second time was copied: its whole session is ended."""
    state = request.config_dict
    body = await read_body(request, RefreshIn)
    settings = state[CONTAINER].settings
    try:
        tokens = await run_db(
            state,
            sessions.refresh,
            state[TOKENS].config,
            sessions.Lifetimes.of(settings),
            body.refresh_token,
            client=client_of(request),
        )
    except InvalidTokenError:
        # A reused token ended its session here: this process refuses its access tokens now.
        ended = await run_db(state, sessions.session_of, body.refresh_token)
        if ended is not None:
            state[SESSION_CACHE].drop(ended.id)
        raise
    return respond(TokensOut.of(tokens))


@routes.post(
    "/auth/logout",
    role=Role.MEMBER,
    summary="Log out: end this session",
    body=LogoutIn,
    answers={204: Answer("Ended (or ended already)", content_type=None)},
    errors={400: "Malformed JSON", 422: "A refresh token that is not one of mine"},
)
async def logout(request: web.Request) -> web.Response:
    """End the session of the request's access token, and that of `refresh_token` if given:
    their refresh tokens stop working at once, their access tokens too."""
    state = request.config_dict
    body = await read_body(request, LogoutIn)
    principal = request[PRINCIPAL]
    ending: set[uuid.UUID] = set()
    if principal.session_id is not None:
        ending.add(principal.session_id)
    if body.refresh_token is not None:
        named = await run_db(state, sessions.session_of, body.refresh_token)
        if named is None or named.user_id != principal.user.id:
            raise InvalidRequestError(
                "refresh_token is not a refresh token of yours",
                errors=[{"field": "refresh_token", "message": "not a refresh token of yours"}],
            )
        ending.add(named.id)
    if not ending:
        raise InvalidRequestError(
            "this token belongs to no session: send the refresh_token of the session to end",
            errors=[{"field": "refresh_token", "message": "required with a token of no session"}],
        )
    await run_db(state, sessions.logout, principal.user.id, ending, client=client_of(request))
    for session_id in ending:
        state[SESSION_CACHE].drop(session_id)
    return web.Response(status=204)


@routes.get(
    "/me/sessions",
    role=Role.MEMBER,
    summary="List my open sessions",
    answers={200: Answer("My open sessions, newest first", SessionList)},
)
async def list_sessions(request: web.Request) -> web.Response:
    """The caller's open sign-in sessions: where and how each signed in, when it was last
    refreshed, and which one this request's token belongs to."""
    principal = request[PRINCIPAL]
    found = await run_db(request.config_dict, sessions.list_open, principal.user.id)
    return respond(SessionList(items=[SessionOut.of(s, principal.session_id) for s in found]))


@routes.route(
    "DELETE",
    "/me/sessions/{session_id}",
    role=Role.MEMBER,
    summary="End one of my sessions",
    parameters=[SESSION_ID],
    answers={204: Answer("Ended: its tokens stop working", content_type=None)},
    errors={404: "No such open session of mine"},
)
async def end_session(request: web.Request) -> web.Response:
    """End one of the caller's sessions (a lost phone, say): its refresh token stops working
    at once, its access tokens within seconds on other servers."""
    state = request.config_dict
    session_id = uuid_of(request, "session_id", "session")
    user_id = request[PRINCIPAL].user.id
    await run_db(
        state, sessions.revoke, user_id, session_id, reason="revoked", client=client_of(request)
    )
    state[SESSION_CACHE].drop(session_id)
    return web.Response(status=204)


@routes.route(
    "DELETE",
    "/me/sessions",
    role=Role.MEMBER,
    summary="End my other sessions",
    answers={200: Answer("How many sessions were ended", EndedOut)},
)
async def end_other_sessions(request: web.Request) -> web.Response:
    """Sign out everywhere else: end every session of the caller but this request's."""
    state = request.config_dict
    principal = request[PRINCIPAL]
    ended = await run_db(
        state,
        sessions.revoke_others,
        principal.user.id,
        keep=principal.session_id,
        client=client_of(request),
    )
    for session_id in ended:
        state[SESSION_CACHE].drop(session_id)
    return respond(EndedOut(ended=len(ended)))
