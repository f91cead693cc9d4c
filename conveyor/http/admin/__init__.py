"""The /admin application: the dashboard's HTML pages for operators and admins, with HTML errors."""

from __future__ import annotations

from aiohttp import web

from conveyor.errors import PermissionDeniedError
from conveyor.http.browser_session import authenticate_page
from conveyor.http.keys import PRINCIPAL
from conveyor.http.middleware import rendering_errors
from conveyor.http.pages import error_page
from conveyor.http.routes import HTML, Route, RouteTable
from conveyor.models import Role

__all__ = ["PREFIX", "build_admin", "routes"]

PREFIX = "/admin"

routes = RouteTable(
    tag="admin",
    error_type=HTML,
    auth_errors={
        401: "Not signed in (a page's GET goes to the sign-in page instead)",
        403: "Not an operator or admin",
    },
)


async def authenticate_admin(request: web.Request, route: Route | None) -> None:
    """The pages are for operators and admins (signed in with the session cookie or a bearer
    token): a path that matches no page too, so others learn nothing of which pages exist."""
    await authenticate_page(request, route)
    if route is None and not request[PRINCIPAL].role.at_least(Role.OPERATOR):
        raise PermissionDeniedError("these pages are for operators and admins")


def build_admin() -> web.Application:
    """The sub-app to mount at /admin; each route names the least role that may see it."""
    app = web.Application(middlewares=[rendering_errors(error_page)])
    routes.install(app, authenticate_admin)
    return app


from conveyor.http.admin import (  # noqa: E402, F401  (the pages add their routes)
    audit,
    errors,
    jobs,
    overview,
    pools,
    queues,
    users,
    workers,
)
