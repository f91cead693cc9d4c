"""The /admin application: HTML pages for admins, with HTML errors; the dashboard comes later."""

from __future__ import annotations

from html import escape

from aiohttp import web

from conveyor.errors import PermissionDeniedError
from conveyor.http.auth import authenticate
from conveyor.http.keys import PRINCIPAL
from conveyor.http.middleware import Failure, rendering_errors
from conveyor.http.routes import HTML, Answer, Route, RouteTable
from conveyor.models import Role

__all__ = ["PREFIX", "build_admin", "routes"]

PREFIX = "/admin"

routes = RouteTable(
    tag="admin",
    error_type=HTML,
    auth_errors={401: "Missing or invalid token", 403: "Not an operator or admin"},
)

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title></head>
<body>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"""
#: Pages hold no script and no outside resource, and (soon) private data: keep them uncached.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}


def page(
    title: str, body: str, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """An HTML page; `title` is escaped here, `body` must already be safe HTML."""
    return web.Response(
        text=_PAGE.format(title=escape(title), body=body),
        status=status,
        content_type="text/html",
        headers={**_PAGE_HEADERS, **(headers or {})},
    )


def error_page(failure: Failure) -> web.Response:
    """An error as a small page: its status, title and detail (and any bad fields)."""
    body = f"<p>{escape(failure.detail)}</p>"
    if failure.errors:
        items = "".join(
            f"<li>{escape(str(e.get('field', '')))}: {escape(str(e.get('message', '')))}</li>"
            for e in failure.errors
        )
        body += f"<ul>{items}</ul>"
    return page(
        f"{failure.status} {failure.title}", body, status=failure.status, headers=failure.headers
    )


async def authenticate_admin(request: web.Request, route: Route | None) -> None:
    """The pages are for operators and admins: a path that matches no page too, so others
    learn nothing of which pages exist."""
    await authenticate(request, route)
    if route is None and not request[PRINCIPAL].role.at_least(Role.OPERATOR):
        raise PermissionDeniedError("these pages are for operators and admins")


@routes.get(
    "/",
    name="admin_index",
    role=Role.OPERATOR,
    answers={
        200: Answer("The index page", content_type=HTML, schema={"type": "string"}),
    },
)
async def index(request: web.Request) -> web.Response:
    """The admin index page (the dashboard is not built yet)."""
    return page("Conveyor admin", "<p>The dashboard is not built yet.</p>")


def build_admin() -> web.Application:
    """The sub-app to mount at /admin; each route names the least role that may see it."""
    app = web.Application(middlewares=[rendering_errors(error_page)])
    routes.install(app, authenticate_admin)
    return app
