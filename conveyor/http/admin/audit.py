"""The audit log page (admins only, like GET /v1/audit-events: it shows every user's email
address, IP and user agent, and its filters tell whether an account exists): security events
newest first, filtered by who acted, on whom, which actions and when."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass

from aiohttp import web

from conveyor.errors import InvalidRequestError, NotFoundError
from conveyor.http.admin import routes
from conveyor.http.api.audit import MAX_ACTIONS
from conveyor.http.keys import CONTAINER
from conveyor.http.page_params import (
    CURSOR,
    LIMIT,
    bad_field,
    cursor_of,
    limit_of,
    next_page_url,
    query_text,
)
from conveyor.http.pages import render
from conveyor.http.routes import HTML, Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import AuditEvent, Role
from conveyor.services import audit, users
from conveyor.services.cursors import Cursors

#: The longest action name (the column's width).
MAX_ACTION = 40

PAGE = {200: Answer("The page", content_type=HTML, schema={"type": "string"})}

#: Actions the filter suggests (any other name may be typed).
KNOWN_ACTIONS = (
    "api_key_created",
    "api_key_revoked",
    "email_verified",
    "error_group_discarded",
    "error_group_retried",
    "job_cancelled",
    "job_retried",
    "jobs_cancelled",
    "jobs_retried",
    "lockout",
    "login",
    "login_failed",
    "logout",
    "mfa_disabled",
    "mfa_enabled",
    "oidc_linked",
    "password_changed",
    "password_reset",
    "queue_paused",
    "queue_purged",
    "queue_resumed",
    "recovery_code_used",
    "recovery_codes_regenerated",
    "refresh_reuse",
    "registered",
    "role_changed",
    "session_revoked",
    "user_disabled",
    "user_enabled",
)
_SEPARATORS = re.compile(r"[\s,]+")


def _moment(request: web.Request, name: str) -> dt.datetime | None:
    """A time of the range: ISO 8601, in UTC unless it gives its offset (a browser's
    date-and-time field sends none)."""
    value = query_text(request, name, max_length=40)
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise bad_field(name, "a time like 2025-01-31T12:00 (UTC unless it says)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 has no UTC time
        raise bad_field(name, "out of range") from None


def _actions(request: web.Request) -> list[str]:
    value = query_text(request, "action", max_length=MAX_ACTIONS * (MAX_ACTION + 1))
    actions = [a for a in _SEPARATORS.split(value or "") if a]
    if len(actions) > MAX_ACTIONS or any(len(a) > MAX_ACTION for a in actions):
        raise bad_field("action", f"at most {MAX_ACTIONS} action names, comma-separated")
    return actions


async def _user_filter(request: web.Request, name: str) -> uuid.UUID | None:
    """A user named by email address or id; 422 naming the field when no account has it."""
    value = query_text(request, name)
    if value is None:
        return None
    if "@" not in value:
        try:
            return uuid.UUID(value)
        except ValueError:
            raise bad_field(name, "a user's email address or id") from None
    try:
        user = await run_db(request.config_dict, users.get_by_email, value)
    except (NotFoundError, InvalidRequestError):
        raise bad_field(name, "no account has this email address") from None
    return user.id


def _form_time(moment: dt.datetime | None) -> str:
    """A time as the date-and-time field shows it (UTC, no offset)."""
    return "" if moment is None else moment.replace(tzinfo=None).isoformat(timespec="seconds")


@dataclass(frozen=True)
class EventRow:
    """An event as the page lists it: the people named by email where they still exist."""

    event: AuditEvent
    actor: str | None
    subject: str | None
    details: str

    @classmethod
    def of(cls, event: AuditEvent, emails: dict[uuid.UUID, str]) -> EventRow:
        def name(user_id: uuid.UUID | None) -> str | None:
            return None if user_id is None else emails.get(user_id, str(user_id))

        details = json.dumps(
            event.details, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str
        )
        return cls(event, name(event.actor_id), name(event.subject_id), details)


@routes.get(
    "/audit",
    name="admin_audit",
    role=Role.ADMIN,
    answers=PAGE,
    parameters=(
        Parameter("actor", "query", {"type": "string"}, "Only events by this user (email or id)"),
        Parameter(
            "action", "query", {"type": "string"}, "Only these actions (comma-separated names)"
        ),
        Parameter("target", "query", {"type": "string"}, "Only events about this user"),
        Parameter(
            "since",
            "query",
            {"type": "string"},
            "Only events at or after this time (UTC unless it gives its offset)",
        ),
        Parameter("until", "query", {"type": "string"}, "Only events before this time"),
        LIMIT,
        CURSOR,
    ),
    errors={400: "A cursor of other filters", 422: "A bad filter"},
)
async def audit_log(request: web.Request) -> web.Response:
    """The audit log: who did what to whom, from where, newest first."""
    state = request.config_dict
    actions = _actions(request)
    since, until = _moment(request, "since"), _moment(request, "until")
    limit = limit_of(request)
    cursor = cursor_of(request)
    actor_id = await _user_filter(request, "actor")
    subject_id = await _user_filter(request, "target")
    page = await run_db(
        state,
        audit.list_events,
        Cursors.of(state[CONTAINER].settings),
        actions=actions,
        subject_id=subject_id,
        actor_id=actor_id,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    people = {i for e in page.items for i in (e.actor_id, e.subject_id) if i is not None}
    emails = await run_db(state, users.emails_of, people)
    return render(
        request,
        "admin/audit.html",
        title="Audit log",
        rows=[EventRow.of(e, emails) for e in page.items],
        filters={
            "actor": query_text(request, "actor") or "",
            "action": ", ".join(actions),
            "target": query_text(request, "target") or "",
            "since": _form_time(since),
            "until": _form_time(until),
        },
        filtered=bool(actions or actor_id or subject_id or since or until),
        known_actions=KNOWN_ACTIONS,
        next_url=next_page_url(request, page.next_cursor),
        first_url=None if cursor is None else str(request.rel_url.without_query_params("cursor")),
    )
