"""The overview page (`/admin/`): what the platform is doing now. Jobs finished per minute by
outcome over the last hour (a bar chart drawn here, as SVG, with a text summary and a table
for those who cannot see it), the failure rate, each queue's depth and oldest waiting job,
and the worker processes alive in each pool. Its figures refresh every few seconds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from conveyor.http.admin import routes
from conveyor.http.keys import CONTAINER
from conveyor.http.pages import render
from conveyor.http.routes import HTML, Answer
from conveyor.http.runtime import run_db
from conveyor.models import Role
from conveyor.services import dashboard

PAGE = Answer("The page", content_type=HTML, schema={"type": "string"})
FRAGMENT = Answer("The page's live part, alone", content_type=HTML, schema={"type": "string"})

#: The chart's drawing box (SVG user units): one slot per minute, bars of `BAR` in each.
WIDTH, HEIGHT = 600, 100
BAR_GAP = 2
#: Outcomes stacked from the bottom, as the stylesheet colours them.
OUTCOMES = ("succeeded", "failed", "cancelled")


class MinuteCounts(Protocol):
    """The jobs that reached each final status in the minute that starts at `at`."""

    @property
    def at(self) -> dt.datetime: ...
    @property
    def succeeded(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def cancelled(self) -> int: ...


@dataclass(frozen=True)
class Segment:
    outcome: str
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    """One minute's stacked bar: where it stands and what it says when pointed at."""

    x: float
    width: float
    segments: list[Segment]
    label: str


@dataclass(frozen=True)
class Chart:
    """A series drawn as bars, with what the page says of it in words."""

    bars: list[Bar]
    peak: int  #: the most jobs finished in one minute: the top of the scale
    totals: dict[str, int]
    summary: str
    minutes: Sequence[MinuteCounts]

    @property
    def finished(self) -> int:
        return sum(self.totals.values())


def _minute_label(minute: MinuteCounts) -> str:
    counts = ", ".join(f"{getattr(minute, o)} {o}" for o in OUTCOMES)
    return f"{minute.at:%H:%M} UTC: {counts}"


def chart(series: Sequence[MinuteCounts]) -> Chart:
    """`series` (oldest minute first) as stacked bars scaled to the busiest minute, and a
    sentence that says what the bars show."""
    totals = {o: sum(getattr(m, o) for m in series) for o in OUTCOMES}
    per_minute = [sum(getattr(m, o) for o in OUTCOMES) for m in series]
    peak = max(per_minute, default=0)
    slot = WIDTH / max(len(series), 1)
    bars = []
    for index, minute in enumerate(series):
        segments = []
        bottom = float(HEIGHT)
        for outcome in OUTCOMES:
            count = getattr(minute, outcome)
            if count and peak:
                height = HEIGHT * count / peak
                bottom -= height
                segments.append(Segment(outcome, round(bottom, 2), round(height, 2)))
        bars.append(
            Bar(
                round(index * slot + BAR_GAP / 2, 2),
                round(max(slot - BAR_GAP, 1), 2),
                segments,
                _minute_label(minute),
            )
        )
    finished = sum(totals.values())
    if not series:
        summary = "No figures yet."
    elif finished == 0:
        summary = f"No job finished in the last {len(series)} minutes."
    else:
        busiest = series[per_minute.index(peak)]
        summary = (
            f"In the last {len(series)} minutes, {finished:,} jobs finished: "
            + ", ".join(f"{totals[o]:,} {o}" for o in OUTCOMES)
            + f". The busiest minute, {busiest.at:%H:%M} UTC, saw {peak:,}."
        )
    return Chart(bars, peak, totals, summary, series)


async def figures(request: web.Request) -> dict[str, Any]:
    """The overview's figures (`overview`, and its series drawn as `chart`), read off the
    event loop."""
    container = request.config_dict[CONTAINER]
    found = await run_db(
        request.config_dict,
        dashboard.overview,
        worker_timeout=dt.timedelta(seconds=container.settings.worker_timeout_seconds),
        queue_names={job_type.queue for job_type in container.registry},
    )
    return {"overview": found, "chart": chart(found.series)}


@routes.get("/", name="admin_index", role=Role.OPERATOR, answers={200: PAGE})
async def index(request: web.Request) -> web.Response:
    """The overview: what the platform is doing now."""
    return render(request, "admin/overview.html", title="Overview", **await figures(request))


@routes.get(
    "/overview/live", name="admin_overview_live", role=Role.OPERATOR, answers={200: FRAGMENT}
)
async def overview_live(request: web.Request) -> web.Response:
    """The overview's figures alone, for the page to refresh them in place."""
    return render(request, "admin/_overview.html", **await figures(request))
