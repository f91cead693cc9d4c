"""The user's notification preferences at /app/preferences: what `GET` and `PUT
/v1/me/subscriptions` read and replace, as a form.

One row per notification kind a user can be sent (and one for all kinds), one column per
channel; each cell is the user's choice for that kind and channel: the default, on, or off.
The most specific choice decides (see `services.subscriptions`). Kinds that Conveyor sends
whatever the preferences (a password reset) are listed as such, without a choice. Choices the
form does not show (made through the API, for a channel a kind has no template for) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from conveyor.http.home import routes
from conveyor.http.home.jobs import PAGE
from conveyor.http.keys import NOTIFICATION_TEMPLATES, USER
from conveyor.http.pages import form_of, render, text_field
from conveyor.http.routes import Answer
from conveyor.http.runtime import run_db
from conveyor.models import Role
from conveyor.notifications.channels import CHANNELS
from conveyor.notifications.templates import Kind
from conveyor.services import subscriptions
from conveyor.services.subscriptions import ANY, Choice

#: A cell's answers: its posted value -> opted in (None: no choice, the default applies).
ANSWERS: dict[str, bool | None] = {"": None, "on": True, "off": False}


@dataclass(frozen=True)
class Row:
    """A row of the form: a kind (or `*`, every kind) and the channels it may be sent on."""

    topic: str
    label: str
    hint: str
    channels: tuple[str, ...]
    #: The channels it goes to unless the user opts out ("" for the row of every kind).
    defaults: tuple[str, ...]

    def key(self, channel: str) -> str:
        """The input of one cell, which is also the field its error names."""
        return f"{self.topic}.{channel}"


def _rows(kinds: list[Kind]) -> list[Row]:
    every = "Applies where a kind's own choice is the default"
    rows = [Row(ANY, "Every kind", every, CHANNELS, ())]
    for kind in kinds:
        if kind.critical or kind.system:
            continue
        hint = kind.description
        if kind.digest_seconds:
            hint += f" At most one message every {_period(kind.digest_seconds)}."
        rows.append(Row(kind.name, kind.name, hint, kind.channels, kind.default_channels))
    return rows


def _period(seconds: int) -> str:
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return "hour" if hours == 1 else f"{hours} hours"
    if seconds % 60 == 0:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"


def _page(
    request: web.Request,
    rows: list[Row],
    values: dict[str, str],
    errors: dict[str, str],
    *,
    status: int = 200,
    notice: str = "",
) -> web.Response:
    kinds = request.config_dict[NOTIFICATION_TEMPLATES].kinds()
    always = [kind for kind in kinds if kind.critical]
    return render(
        request,
        "app/preferences.html",
        status=status,
        title="Notifications",
        rows=rows,
        channels=CHANNELS,
        values=values,
        errors=errors,
        always=always,
        notice=notice,
    )


@routes.get(
    "/preferences",
    name="home_preferences",
    role=Role.MEMBER,
    parameters=[],
    answers=PAGE,
)
async def preferences(request: web.Request) -> web.Response:
    """The user's notification preferences: each kind and channel on, off or the default."""
    rows = _rows(request.config_dict[NOTIFICATION_TEMPLATES].kinds())
    stored = await run_db(request.config_dict, subscriptions.list_for_user, request[USER].id)
    values = {f"{c.topic}.{c.channel}": "on" if c.opted_in else "off" for c in stored}
    notice = "Your preferences were saved." if request.query.get("done") == "saved" else ""
    return _page(request, rows, values, {}, notice=notice)


@routes.post(
    "/preferences",
    name="home_save_preferences",
    role=Role.MEMBER,
    answers={303: Answer("Saved: back to the preferences", content_type=None)},
    errors={422: "An answer that is not default, on or off (the form again, with it marked)"},
)
async def save_preferences(request: web.Request) -> web.Response:
    """Replace the user's choices with the form's (as `PUT /v1/me/subscriptions`), keeping
    those the form does not show; 303 back, or the form again (422) with its errors."""
    posted = await form_of(request)
    state = request.config_dict
    rows = _rows(state[NOTIFICATION_TEMPLATES].kinds())
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    chosen: dict[tuple[str, str], bool] = {}
    shown: set[tuple[str, str]] = set()
    for row in rows:
        for channel in row.channels:
            key = row.key(channel)
            shown.add((row.topic, channel))
            values[key] = text_field(posted, key)
            if values[key] not in ANSWERS:
                errors[key] = "choose default, on or off"
                continue
            answer = ANSWERS[values[key]]
            if answer is not None:
                chosen[(row.topic, channel)] = answer
    if errors:
        return _page(request, rows, values, errors, status=422)
    user_id = request[USER].id
    stored = await run_db(state, subscriptions.list_for_user, user_id)
    kept = [c for c in stored if (c.topic, c.channel) not in shown]
    choices = kept + [Choice(topic, channel, on) for (topic, channel), on in chosen.items()]
    await run_db(state, subscriptions.replace_for_user, user_id, choices)
    raise web.HTTPSeeOther("/app/preferences?done=saved")
