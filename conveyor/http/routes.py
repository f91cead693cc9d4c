"""Routes declared once: method, path, handler, and what the OpenAPI document says of them."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import MultiMapping
from pydantic import BaseModel

from conveyor.errors import InvalidRequestError
from conveyor.models import Role
from conveyor.settings import Settings

if TYPE_CHECKING:
    from conveyor.http.openapi import Context

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
#: Runs before every route that is not public (with the route, None for a request that
#: matched none): says who is asking, and raises to refuse the request.
Authenticator = Callable[[web.Request, "Route | None"], Awaitable[None]]
#: A JSON Schema, or one computed from the settings (a limit the deployment configures);
#: a parameter's description may depend on them the same way.
Schema = Mapping[str, Any] | Callable[[Settings], Mapping[str, Any]]
#: A request body schema built when the document is (from the job-type registry, say).
SchemaHook = Callable[["Context"], Mapping[str, Any]]

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
EVENT_STREAM = "text/event-stream"
HTML = "text/html"

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
#: What a 422 for unknown query parameters echoes at most: so many names, so long each.
MAX_ERRORS = 20
MAX_NAME = 100
#: The 422 a route of a table with `known_query_only` gives for a query parameter it does not take.
UNKNOWN_QUERY = "an unknown query parameter, or a single-valued one given more than once"
_PLACEHOLDER = re.compile(r"\{(\w+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class Parameter:
    """A query, header or path parameter of a route."""

    name: str
    where: Literal["query", "header", "path"]
    schema: Schema
    description: str | Callable[[Settings], str] = ""
    required: bool = False
    #: OpenAPI's `style: form, explode: false`: one value, comma-separated (`?status=a,b`).
    comma_separated: bool = False

    def schema_for(self, settings: Settings) -> dict[str, Any]:
        return dict(self.schema(settings) if callable(self.schema) else self.schema)

    def description_for(self, settings: Settings) -> str:
        return self.description(settings) if callable(self.description) else self.description


@dataclass(frozen=True)
class Answer:
    """A success answer of a route: what it means, its media type and body."""

    description: str
    model: type[BaseModel] | None = None
    content_type: str | None = JSON
    #: The body's schema when there is no model (`{"type": "string"}` for text; none: any).
    schema: Mapping[str, Any] | None = None
    #: Response headers worth documenting: name -> meaning.
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Route:
    """One route: how aiohttp dispatches it and how the OpenAPI document describes it."""

    method: str
    path: str
    handler: Handler
    summary: str
    name: str
    public: bool = False
    description: str = ""
    body: type[BaseModel] | SchemaHook | None = None
    #: False: the body may be left out (every field of `body` then takes its default).
    body_required: bool = True
    answers: Mapping[int, Answer] = field(default_factory=dict)
    parameters: tuple[Parameter, ...] = ()
    #: Error statuses this route answers (beyond authentication, 500 and 503): status -> when.
    errors: Mapping[int, str] = field(default_factory=dict)
    #: The least role that may call it (every route that is not public says).
    role: Role | None = None
    #: The scope an API key needs to call it; None: API keys may not (the account's own
    #: security: sessions, keys, MFA).
    scope: str | None = None

    def check_query(self, query: MultiMapping[str]) -> None:
        """422 naming each query parameter that the route does not declare, or that it takes
        once and was given more than once."""
        declared = {p.name: p.comma_separated for p in self.parameters if p.where == "query"}
        unknown = [name for name in dict.fromkeys(query.keys()) if name not in declared]
        repeated = [
            name
            for name, repeatable in declared.items()
            if not repeatable and len(query.getall(name, ())) > 1
        ]
        if not (unknown or repeated):
            return
        takes = ", ".join(sorted(declared)) or "none"
        errors = [
            {"field": name[:MAX_NAME], "message": "unknown query parameter"}
            for name in unknown[:MAX_ERRORS]
        ] + [{"field": name, "message": "given more than once"} for name in repeated]
        first = errors[0]
        raise InvalidRequestError(
            f"{first['message']}: {first['field']!r} (query parameters of this route: {takes})",
            errors=errors,
        )


class RouteTable:
    """The routes of one application, declared with `@table.get(...)` / `@table.post(...)`.

    `error_type` is the media type of the app's error answers; `auth_errors` the statuses its
    authentication gives a route that is not public (401, and 403 where a role is needed).
    With `known_query_only`, a query parameter that a route does not declare (or a
    single-valued one given twice) answers 422, after authentication.
    """

    def __init__(
        self,
        *,
        tag: str,
        error_type: str = PROBLEM_JSON,
        auth_errors: Mapping[int, str] | None = None,
        known_query_only: bool = False,
    ) -> None:
        self.tag = tag
        self.error_type = error_type
        self.auth_errors = dict(auth_errors or {401: "Missing or invalid token"})
        self.known_query_only = known_query_only
        self._routes: list[Route] = []

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def get(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("POST", path, **options)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str | None = None,
        name: str | None = None,
        public: bool = False,
        body: type[BaseModel] | SchemaHook | None = None,
        body_required: bool = True,
        answers: Mapping[int, Answer] | None = None,
        parameters: Iterable[Parameter] = (),
        errors: Mapping[int, str] | Iterable[int] = (),
        role: Role | None = None,
        scope: str | None = None,
    ) -> Callable[[H], H]:
        """Declare the decorated handler as `method path`; mistakes fail at import.

        A route that is not public says who may call it: the least `role`, and the `scope`
        an API key needs (none: API keys may not)."""

        def declare(handler: H) -> H:
            doc = inspect.cleandoc(handler.__doc__ or "")
            route = Route(
                method=method.upper(),
                path=path,
                handler=handler,
                summary=summary or doc.partition("\n")[0],
                name=name or handler.__name__,
                public=public,
                description=" ".join(doc.split()),
                body=body,
                body_required=body_required,
                answers=dict(answers or {200: Answer("OK")}),
                parameters=tuple(parameters),
                errors=_error_descriptions(errors),
                role=role,
                scope=scope,
            )
            self._check(route)
            self._routes.append(route)
            return handler

        return declare

    def _check(self, route: Route) -> None:
        where = f"{route.method} {route.path} ({route.name})"
        if route.method not in METHODS:
            raise ValueError(f"{where}: method must be one of {sorted(METHODS)}")
        if not route.path.startswith("/"):
            raise ValueError(f"{where}: the path must start with '/'")
        if not route.summary:
            raise ValueError(f"{where}: give a summary or a docstring")
        if route.public and (route.role is not None or route.scope is not None):
            raise ValueError(f"{where}: a public route takes no role or scope")
        if not route.public and route.role is None:
            raise ValueError(f"{where}: say who may call it (role=...), or public=True")
        declared = {p.name for p in route.parameters if p.where == "path"}
        if declared != set(_PLACEHOLDER.findall(route.path)):
            raise ValueError(f"{where}: declare each path parameter, and only those")
        for other in self._routes:
            if (other.method, other.path) == (route.method, route.path):
                raise ValueError(f"{where}: declared twice")
            if other.handler is route.handler or other.name == route.name:
                raise ValueError(f"{where}: the handler or name is already {other.path}'s")

    def lookup(self, match_info: web.UrlMappingMatchInfo) -> Route | None:
        """The route a request matched, if it is one of this table's (HEAD is GET's)."""
        if match_info.http_exception is not None:
            return None
        method = match_info.route.method
        method = "GET" if method == "HEAD" else method
        for route in self._routes:
            if route.handler is match_info.handler and route.method == method:
                return route
        return None

    def install(self, app: web.Application, authenticate: Authenticator | None) -> None:
        """Add the routes to `app`, and a middleware that runs `authenticate` before every
        route not marked public, and before any unmatched path or method: closed by default.
        Without an authenticator, every route must be public. Call before `add_subapp`."""
        if authenticate is None:
            private = [f"{r.method} {r.path}" for r in self._routes if not r.public]
            if private:
                raise ValueError(f"routes need an authenticator, or public=True: {private}")
        else:
            app.middlewares.append(self._guard(authenticate))
        if self.known_query_only:
            app.middlewares.append(self._known_query)
        for route in self._routes:
            if route.method == "GET":  # HEAD too, as aiohttp's add_get does
                app.router.add_get(route.path, route.handler, name=route.name)
            else:
                app.router.add_route(route.method, route.path, route.handler, name=route.name)

    def _guard(self, authenticate: Authenticator) -> Middleware:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = self.lookup(request.match_info)
            if route is None or not route.public:
                await authenticate(request, route)
            return await handler(request)

        return guard

    @web.middleware
    async def _known_query(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.query_string:  # nothing to look up on most requests
            route = self.lookup(request.match_info)
            if route is not None:
                route.check_query(request.query)
        return await handler(request)


def _error_descriptions(errors: Mapping[int, str] | Iterable[int]) -> dict[int, str]:
    if isinstance(errors, Mapping):
        return dict(errors)
    return {status: HTTPStatus(status).phrase for status in errors}


def openapi_path(path: str) -> str:
    """An aiohttp path as OpenAPI writes it: `{name:regex}` becomes `{name}`."""
    return _PLACEHOLDER.sub(r"{\1}", path)
