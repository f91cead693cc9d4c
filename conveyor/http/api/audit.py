"""Routes of the audit log (admins): security events, newest first."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from conveyor.errors import InvalidRequestError
from conveyor.http.api.params import CURSOR, next_page_link, page_limit, page_size, respond, routes
from conveyor.http.keys import CONTAINER
from conveyor.http.routes import Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import AuditEvent, Role, Scope
from conveyor.services import audit
from conveyor.services.cursors import Cursors

#: The most actions one listing filters by.
MAX_ACTIONS = 20


class AuditEventOut(BaseModel):
    """A security event: who did what to whom, from where."""

    id: uuid.UUID
    at: dt.datetime
    action: str
    actor_id: uuid.UUID | None
    subject_id: uuid.UUID | None
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]

    @classmethod
    def of(cls, e: AuditEvent) -> AuditEventOut:
        return cls(
            id=e.id,
            at=e.at,
            action=e.action,
            actor_id=e.actor_id,
            subject_id=e.subject_id,
            ip=e.ip,
            user_agent=e.user_agent,
            details=e.details,
        )


class AuditEventPage(BaseModel):
    """One page of events, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[AuditEventOut]
    next_cursor: str | None = None


def _id(request: web.Request, name: str) -> uuid.UUID | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequestError(
            f"{name} must be a user id", errors=[{"field": name, "message": "not an id"}]
        ) from None


def _time(request: web.Request, name: str) -> dt.datetime | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidRequestError(
            f"{name} must be an ISO 8601 time with its offset (2025-01-31T12:00:00Z)",
            errors=[{"field": name, "message": "an ISO 8601 time with an offset"}],
        )
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 has no UTC time
        raise InvalidRequestError(
            f"{name} is out of range", errors=[{"field": name, "message": "out of range"}]
        ) from None


def _actions(request: web.Request) -> list[str]:
    actions = [a for value in request.query.getall("action", ()) for a in value.split(",") if a]
    if len(actions) > MAX_ACTIONS or any(len(a) > 40 for a in actions):
        raise InvalidRequestError(
            f"action: at most {MAX_ACTIONS} actions of at most 40 characters",
            errors=[{"field": "action", "message": f"at most {MAX_ACTIONS} short names"}],
        )
    return actions


def _user_id_parameter(name: str, description: str) -> Parameter:
    return Parameter(name, "query", {"type": "string", "format": "uuid"}, description)


def _time_parameter(name: str, description: str) -> Parameter:
    return Parameter(name, "query", {"type": "string", "format": "date-time"}, description)


@routes.get(
    "/audit-events",
    role=Role.ADMIN,
    scope=Scope.USERS_READ,
    summary="Read the audit log (admins)",
    parameters=[
        Parameter(
            "action",
            "query",
            {"type": "array", "items": {"type": "string", "maxLength": 40}},
            "Only these actions (`login`, `login_failed`, `role_changed`...)",
            comma_separated=True,
        ),
        _user_id_parameter("subject_id", "Only events about this user"),
        _user_id_parameter("actor_id", "Only events by this user"),
        _time_parameter("since", "Only events at or after this time"),
        _time_parameter("until", "Only events before this time"),
        page_limit("Events per page"),
        CURSOR,
    ],
    answers={
        200: Answer(
            "A page of events, newest first",
            AuditEventPage,
            headers={"Link": '`<url>; rel="next"`: the next page'},
        )
    },
    errors={
        403: "Not an admin (or an admin signed in without a second factor)",
        400: "A cursor issued for other filters",
        422: "A bad filter",
    },
)
async def list_audit_events(request: web.Request) -> web.Response:
    """Security events (sign-ins and failures, lockouts, logouts, password, role and MFA
    changes, API keys, disabled accounts), who acted, on whom, from where."""
    state = request.config_dict
    settings = state[CONTAINER].settings
    page = await run_db(
        state,
        audit.list_events,
        Cursors.of(settings),
        actions=_actions(request),
        subject_id=_id(request, "subject_id"),
        actor_id=_id(request, "actor_id"),
        since=_time(request, "since"),
        until=_time(request, "until"),
        cursor=request.query.get("cursor") or None,
        limit=page_size(request, settings),
    )
    out = AuditEventPage(
        items=[AuditEventOut.of(e) for e in page.items], next_cursor=page.next_cursor
    )
    return respond(out, headers=next_page_link(request, settings, page.next_cursor))
