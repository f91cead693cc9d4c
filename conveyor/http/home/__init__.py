"""The /app application: the user's own pages (their jobs, a form to submit one, their
notification preferences), and the sign-in pages the dashboard shares. HTML errors."""

from __future__ import annotations

from aiohttp import web

from conveyor.http.browser_session import authenticate_page
from conveyor.http.middleware import rendering_errors
from conveyor.http.pages import error_page
from conveyor.http.routes import HTML, RouteTable

__all__ = ["PREFIX", "build_home", "routes"]

PREFIX = "/app"

routes = RouteTable(
    tag="pages",
    error_type=HTML,
    auth_errors={401: "Not signed in (a page's GET goes to the sign-in page instead)"},
)


def build_home() -> web.Application:
    """The sub-app to mount at /app."""
    app = web.Application(middlewares=[rendering_errors(error_page)])
    routes.install(app, authenticate_page)
    return app


# The pages, each module adding its routes to `routes`.
from conveyor.http.home import jobs, preferences, signin  # noqa: E402, F401
