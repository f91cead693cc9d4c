"""What the /v1 routes share: their route table, the job id in a path, bounded numbers from
query strings and headers, and JSON answers."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from conveyor.errors import NotFoundError
from conveyor.http.routes import Parameter, RouteTable
from conveyor.models import Job
from conveyor.models.job import FINISHED

routes = RouteTable(tag="jobs", known_query_only=True)

JOB_ID = Parameter(
    "job_id", "path", {"type": "string", "format": "uuid"}, "The job's id", required=True
)


def respond(model: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=model.model_dump_json(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def job_id_of(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["job_id"])
    except ValueError:
        raise NotFoundError("no such job (not a job id)") from None


def bounded_int(value: str, low: int, high: int) -> int:
    """`value` as an integer within [low, high]; anything else (too long, not ASCII digits,
    out of range) gives `low`."""
    if len(value) > 19 or not (value.isascii() and value.isdigit()):
        return low
    return min(max(int(value), low), high)


def is_finished(job: Job) -> bool:
    return job.status in FINISHED
