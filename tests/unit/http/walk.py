"""Every route of a built app, found through the routers of the root app and its sub-apps."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web

from conveyor.http.keys import ROUTE_TABLES
from conveyor.http.routes import Route, RouteTable


@dataclass(frozen=True)
class Found:
    """A route as aiohttp dispatches it, with its app's mount prefix and its declaration."""

    method: str
    path: str  # the full path template, as the root app matches it
    prefix: str  # "" for the root app
    table: RouteTable | None  # the route table of the app that holds the route
    spec: Route | None  # None: the route was added to a router without a declaration

    def url(self) -> str:
        """The path with each `{placeholder}` filled in."""
        return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), self.path)


def routes_of(root: web.Application) -> list[Found]:
    tables = root[ROUTE_TABLES]
    return list(_walk(root, "", tables))


def _walk(app: web.Application, prefix: str, tables: dict[str, RouteTable]) -> Iterator[Found]:
    table = tables.get(prefix)
    for resource in app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            info = resource.get_info()
            yield from _walk(info["app"], info["prefix"], tables)  # already the full prefix
            continue
        for route in resource:
            spec = None
            if table is not None:
                method = "GET" if route.method == "HEAD" else route.method
                spec = next(
                    (
                        r
                        for r in table
                        if r.method == method and prefix + r.path == resource.canonical
                    ),
                    None,
                )
            yield Found(route.method, resource.canonical, prefix, table, spec)
