"""What the /v1 routes share: their route table, the job id in a path, bounded numbers from
query strings and headers, full URLs, and JSON answers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from multidict import MultiDict
from pydantic import BaseModel
from pydantic_core import from_json
from yarl import URL

from conveyor.errors import BadRequestError, NotFoundError
from conveyor.http.routes import Parameter, RouteTable
from conveyor.models import Job
from conveyor.models.job import FINISHED
from conveyor.services.submissions import KEY_PATTERN, MAX_KEY_LENGTH
from conveyor.settings import Settings

M = TypeVar("M", bound=BaseModel)

routes = RouteTable(
    tag="jobs",
    known_query_only=True,
    auth_errors={
        401: "Missing, invalid, expired or revoked token or API key",
        403: "The role, or the API key's scopes, do not allow it",
    },
)

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A `Host` header we put in a URL: a name or IPv4 address, or a bracketed IPv6 one; a port.
_HOST = re.compile(
    rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]{{2,45}}\])(?::(?P<port>[0-9]{{1,5}}))?"
)
MAX_PORT = 65535

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


async def read_body(request: web.Request, model: type[M]) -> M:
    """The request's JSON body (strict: no NaN or Infinity) validated by `model`; 400 for
    JSON that does not parse, 422 naming each bad field."""
    try:
        document = from_json(await request.read() or b"{}", allow_inf_nan=False)
    except ValueError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    return model.model_validate(document)


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


def absolute_url(request: web.Request, settings: Settings, url: URL) -> str:
    """`url` (a path and query on this server) as a full URL: under `CONVEYOR_PUBLIC_URL`, or
    else at the request's scheme and `Host`. A `Host` that is no host name or address (with
    an optional port) gets `url` as it is, relative to the request's URL."""
    if settings.public_url is not None:
        return f"{str(settings.public_url).rstrip('/')}{url}"
    host = request.host
    match = _HOST.fullmatch(host)
    if match is None or int(match.group("port") or 0) > MAX_PORT:
        return str(url)
    return f"{request.scheme}://{host}{url}"


def next_page_link(request: web.Request, settings: Settings, cursor: str | None) -> dict[str, str]:
    """The `Link` header of a page whose next one starts at `cursor` (none for the last
    page): this request's URL, its other parameters kept (repeated ones too), with `cursor`."""
    if not cursor:
        return {}
    query = MultiDict(request.query)  # keeps repeated parameters (?type=a&type=b)
    query["cursor"] = cursor
    next_page = absolute_url(request, settings, request.rel_url.with_query(query))
    return {"Link": f'<{next_page}>; rel="next"'}


def page_limit(description: str | Callable[[Settings], str]) -> Parameter:
    """The `limit` parameter of a paged list: 1 to `CONVEYOR_MAX_PAGE_SIZE`."""
    return Parameter(
        "limit",
        "query",
        lambda settings: {
            "type": "integer",
            "minimum": 1,
            "maximum": settings.max_page_size,
            "default": settings.default_page_size,
        },
        description,
    )


def idempotency_key(description: str) -> Parameter:
    """The `Idempotency-Key` header of a route that creates something (checked by
    `services.submissions.check_idempotency_key`)."""
    return Parameter(
        "Idempotency-Key",
        "header",
        {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN},
        description,
    )


#: The `cursor` parameter of a paged list.
CURSOR = Parameter("cursor", "query", {"type": "string"}, "The `next_cursor` of the last page")


def is_finished(job: Job) -> bool:
    return job.status in FINISHED
