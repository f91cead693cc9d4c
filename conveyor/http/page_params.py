"""What the admin's pages read from a query or a form: a trimmed text, a page's limit and
cursor, and the 422 that names the bad field.

The pages of several admin modules (the audit log, the users, the jobs, the error groups)
read their filters the same way, so that a bad one is refused with the same answer.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from conveyor.errors import InvalidRequestError
from conveyor.http.routes import Parameter

#: Rows a list shows without `limit`, and at most.
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: The longest cursor a Next link carries, with room to spare.
MAX_CURSOR = 1000

LIMIT = Parameter(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    "Rows per page",
)
CURSOR = Parameter("cursor", "query", {"type": "string"}, "Where the page starts (its Next link)")


def bad_field(name: str, message: str) -> InvalidRequestError:
    """The 422 of a bad query parameter or form field, naming it."""
    return InvalidRequestError(f"{name}: {message}", errors=[{"field": name, "message": message}])


def single_text(values: Any, name: str, *, max_length: int) -> str:
    """A text parameter of a query or a form (a multidict), given once at most, trimmed ("" when
    absent, or when a form sends a file in its place)."""
    given = values.getall(name, [])
    if len(given) > 1:
        raise bad_field(name, "given more than once")
    value = given[0].strip() if given and isinstance(given[0], str) else ""
    if len(value) > max_length:
        raise bad_field(name, f"at most {max_length} characters")
    return value


def query_text(request: web.Request, name: str, *, max_length: int = 320) -> str | None:
    """A query parameter, trimmed; None when absent or empty (a filter form sends every field,
    filled in or not)."""
    value = request.query.get(name, "").strip()
    if len(value) > max_length:
        raise bad_field(name, f"at most {max_length} characters")
    return value or None


def limit_of(request: web.Request) -> int:
    """The page's `limit`: 1 to MAX_LIMIT rows, DEFAULT_LIMIT when not given."""
    value = query_text(request, "limit", max_length=10)
    if value is None:
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
        raise bad_field("limit", f"a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def cursor_of(request: web.Request) -> str | None:
    """Where the page starts (the `cursor` of its Next link); None for the first page."""
    return query_text(request, "cursor", max_length=MAX_CURSOR)


def next_page_url(request: web.Request, cursor: str | None) -> str | None:
    """This page's URL, its filters kept, starting where `cursor` says (None: no next page)."""
    if cursor is None:
        return None
    return str(request.rel_url.update_query(cursor=cursor))
