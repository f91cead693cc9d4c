"""Server-rendered HTML pages (`/admin` and the user's `/app`): the Jinja2 templates, the
stylesheet and script they load, the headers every page carries, and the forms they post.

Pages load nothing from elsewhere and run no inline script: the Content-Security-Policy allows
only this app's own `/static/` files. Each asset's URL carries a hash of its content, so
browsers may keep it for a year and still get a new one with each release. Every page works
without JavaScript; the one small script only refreshes the parts of a page marked
`data-refresh` (see `conveyor/static/conveyor.js`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup, escape
from multidict import MultiDictProxy

from conveyor.errors import PermissionDeniedError
from conveyor.http.middleware import Failure
from conveyor.models.base import utcnow

__all__ = [
    "CSP",
    "CSRF_FIELD",
    "PAGE_HEADERS",
    "Asset",
    "csrf_input",
    "error_page",
    "form_of",
    "render",
    "render_text",
    "static_url",
    "text_field",
]

_PACKAGE = Path(__file__).resolve().parent.parent
TEMPLATES = _PACKAGE / "templates"
STATIC = _PACKAGE / "static"

#: Only this app's own files, no inline script or style, no framing, forms post here only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: Pages hold private data: never cached, never framed, never sniffed.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
#: The form field that carries the CSRF token of the signed-in session.
CSRF_FIELD = "csrf_token"
#: What a page's form may post, at most (a job's payload is the biggest thing a form sends).
MAX_FORM_BYTES = 256 * 1024

#: Request keys: the CSRF token a form of this request's session must carry (set by the
#: cookie authentication; absent for a bearer token, which a browser never sends by itself).
CSRF_TOKEN = web.RequestKey("csrf_token", str)


@dataclass(frozen=True)
class Asset:
    """A file of `conveyor/static/`, read once: its bytes, media type and content hash."""

    name: str
    body: bytes
    content_type: str
    digest: str

    @property
    def url(self) -> str:
        return f"/static/{self.name}?v={self.digest}"


@functools.cache
def assets() -> Mapping[str, Asset]:
    """Every file of `conveyor/static/` by name (no dot files, no directories), read once: a
    name is looked up here, so asking for unknown names keeps nothing."""
    found: dict[str, Asset] = {}
    for path in sorted(STATIC.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            body = path.read_bytes()
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            digest = hashlib.sha256(body).hexdigest()[:16]
            found[path.name] = Asset(path.name, body, content_type, digest)
    return found


def asset(name: str) -> Asset | None:
    """The static file `name` (a plain file name), or None."""
    return assets().get(name)


def static_url(name: str) -> str:
    """The URL of a static file, with its content hash (a missing file is a bug: KeyError)."""
    found = asset(name)
    if found is None:
        raise KeyError(f"no static file {name!r}")
    return found.url


def _ago(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """`when` as a short age: "12 s ago", "3 min ago", "5 h ago", "2 d ago"."""
    if when is None:
        return "never"
    seconds = ((now or utcnow()) - when).total_seconds()
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: float | None) -> str:
    """A duration for people: "850 ms", "12 s", "3 min", "5 h", "2 d"."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _when(value: dt.datetime | None) -> str:
    """A timestamp as UTC ISO 8601 to the second (pages show ages; this goes in titles)."""
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


#: A `code` span of a docstring or a description, as people write them in text.
_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def _prose(text: str | None) -> Markup:
    """Text written for people (a job type's docstring, a field's description), escaped, with
    its `code` spans shown as code rather than between backticks."""
    escaped = str(escape(text or ""))
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", escaped))  # escaped above


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


@functools.cache
def environment() -> jinja2.Environment:
    """The templates of the pages: escaped, and strict about names they do not get."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static_url"] = static_url
    env.filters["ago"] = _ago
    env.filters["span"] = _span
    env.filters["when"] = _when
    env.filters["pretty"] = _pretty
    env.filters["prose"] = _prose
    return env


def render_text(template: str, context: Mapping[str, Any]) -> str:
    """`template` (a path under `conveyor/templates/`) rendered with `context`."""
    return environment().get_template(template).render(context)


def error_page(failure: Failure) -> web.Response:
    """An error as a small page: its status, title and detail (and any bad fields)."""
    text = render_text(
        "web/error.html",
        {
            "title": f"{failure.status} {failure.title}",
            "status": failure.status,
            "detail": failure.detail,
            "errors": failure.errors or [],
            "principal": None,
            "csrf_input": "",
        },
    )
    return web.Response(
        text=text,
        status=failure.status,
        content_type="text/html",
        headers={**PAGE_HEADERS, **failure.headers},
    )


def csrf_input(request: web.Request) -> Markup:
    """The hidden field every state-changing form of a page carries (empty for a bearer token)."""
    token = request.get(CSRF_TOKEN)
    if not token:
        return Markup("")
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, token)


def render(
    request: web.Request,
    template: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> web.Response:
    """A page: `template` rendered with `context`, the request, its principal and the CSRF
    field for its forms."""
    from conveyor.http.keys import PRINCIPAL  # the keys module imports the app's state types

    text = render_text(
        template,
        {
            "request": request,
            "principal": request.get(PRINCIPAL),
            "csrf_input": csrf_input(request),
            "now": utcnow(),
            **context,
        },
    )
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={**PAGE_HEADERS, **(headers or {})},
    )


async def form_of(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The posted form, after checking its CSRF token when the request was signed in with the
    session cookie (a cross-site form can make the browser send the cookie, never the token).
    PermissionDeniedError (403) when the token is missing or wrong."""
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_FORM_BYTES, actual_size=request.content_length
        )
    # A chunked body says no length: the limit counts the bytes as they arrive (413 past it).
    form = await request.clone(client_max_size=MAX_FORM_BYTES).post()
    expected = request.get(CSRF_TOKEN)
    if expected is not None:
        given = form.get(CSRF_FIELD)
        if not isinstance(given, str) or not hmac.compare_digest(given, expected):
            raise PermissionDeniedError(
                "the form's security token is missing or out of date: reload the page and "
                "send it again"
            )
    return form


def text_field(form: Mapping[str, Any], name: str, default: str = "") -> str:
    """A text field of a form ("" or `default` when absent or a file)."""
    value = form.get(name, default)
    return value.strip() if isinstance(value, str) else default
