"""Routes are closed by default: every route not declared public needs a token, on any path."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from conveyor.errors import AuthenticationError
from conveyor.http.middleware import problems
from conveyor.http.routes import HTML, PROBLEM_JSON, Answer, Parameter, RouteTable
from conveyor.models import Role
from tests.stack import Stack
from tests.unit.http.test_access import SIGN_IN_FORMS
from tests.unit.http.walk import routes_of

#: The media type of each sub-app's errors, as the README promises them.
ERROR_TYPE = {"": PROBLEM_JSON, "/v1": PROBLEM_JSON, "/admin": HTML, "/app": HTML}


async def test_every_route_not_marked_public_needs_a_token(embedded_stack: Stack) -> None:
    found = routes_of(embedded_stack.client.app)
    assert {f.prefix for f in found} == {"", "/v1", "/admin", "/app"}
    assert len(found) > 10
    for route in found:
        response = await embedded_stack.client.request(
            route.method, route.url(), allow_redirects=False
        )
        where = (route.method, route.path)
        if route.spec is not None and route.spec.public:
            if where in SIGN_IN_FORMS:  # refused for want of the form's token
                assert response.status == 403, where
                continue
            assert response.status not in (401, 403), where
            continue
        if route.method in ("GET", "HEAD") and route.prefix in ("/admin", "/app"):
            # A page's GET sends a browser to the sign-in form.
            assert response.status == 303, where
            continue
        assert response.status == 401, where
        assert response.headers["Content-Type"].startswith(ERROR_TYPE[route.prefix]), where
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="conveyor"', where


async def test_the_public_routes_are_the_operational_ones_and_unsubscribing(
    embedded_stack: Stack,
) -> None:
    public = {
        (f.method, f.path) for f in routes_of(embedded_stack.client.app) if f.spec and f.spec.public
    }
    assert {path for _, path in public} == {
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/.well-known/jwks.json",
        "/static/{name}",  # the pages' stylesheet and script
        "/v1/unsubscribe",  # the signed token of an email's link is the proof
        "/v1/auth/refresh",  # the refresh token is the proof
        "/v1/auth/login/mfa",  # the mfa_token of a sign-in's first step is the proof
        # An OpenID Connect login: the provider's answer (and the login's state) is the proof.
        "/v1/auth/oidc/providers",
        "/v1/auth/oidc/{provider}/start",
        "/v1/auth/oidc/{provider}/callback",
        "/v1/auth/oidc/exchange",  # the one-time login code of a callback is the proof
        # accounts: signing in, and what a person who cannot sign in yet needs
        "/v1/auth/register",
        "/v1/auth/verify-email",
        "/v1/auth/verify-email/resend",
        "/v1/auth/login",
        "/v1/auth/password-reset",
        "/v1/auth/password-reset/confirm",
        # the browser's sign-in forms (a double-submit token guards their posts)
        "/app/login",
        "/app/login/mfa",
        "/app/login/link",  # the single-use token of a link made on the server is the proof
    }


async def test_every_route_is_declared_in_a_route_table(embedded_stack: Stack) -> None:
    undeclared = [
        (f.method, f.path) for f in routes_of(embedded_stack.client.app) if f.spec is None
    ]
    assert not undeclared


async def test_an_unknown_path_under_v1_needs_a_token_before_it_is_not_found(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    for method, path in [("GET", "/v1/nope"), ("GET", "/v1"), ("POST", "/v1/jobs/x/y")]:
        response = await stack.client.request(method, path)
        assert response.status == 401, path
        assert response.headers["Content-Type"].startswith(PROBLEM_JSON)
        body = await response.json(content_type=None)
        assert body["status"] == 401
        response = await stack.client.request(method, path, headers=stack.headers())
        assert response.status == 404, path
        assert response.headers["Content-Type"].startswith(PROBLEM_JSON)
        assert (await response.json(content_type=None))["detail"] == f"no route matches {path}"


async def test_a_wrong_method_under_v1_needs_a_token_before_it_is_not_allowed(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    assert (await stack.client.delete("/v1/jobs")).status == 401
    response = await stack.client.delete("/v1/jobs", headers=stack.headers())
    assert response.status == 405
    assert response.headers["Content-Type"].startswith(PROBLEM_JSON)


async def test_unknown_paths_outside_the_sub_apps_are_still_problems(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get("/nope")
    assert response.status == 404
    assert response.headers["Content-Type"].startswith(PROBLEM_JSON)
    response = await embedded_stack.client.post("/healthz")
    assert response.status == 405
    assert response.headers["Content-Type"].startswith(PROBLEM_JSON)


async def test_head_of_a_public_route_needs_no_token(embedded_stack: Stack) -> None:
    assert (await embedded_stack.client.head("/healthz")).status == 200
    assert (await embedded_stack.client.head("/v1/jobs")).status == 401


# --- the route table on its own ---------------------------------------------------------------


async def _ok(request: web.Request) -> web.Response:
    """Answer OK."""
    return web.json_response({"ok": True})


async def _refuse(request: web.Request, route: object) -> None:
    raise AuthenticationError("no")


def _table() -> RouteTable:
    table = RouteTable(tag="test")
    table.get("/open", public=True, name="open")(_ok)
    table.get("/closed", name="closed", role=Role.MEMBER)(_ok_closed)
    return table


async def _ok_closed(request: web.Request) -> web.Response:
    """Answer OK, after authentication."""
    return web.json_response({"ok": True})


async def test_a_route_added_without_a_declaration_is_closed(aiohttp_client: Any) -> None:
    app = web.Application(middlewares=[problems])
    _table().install(app, _refuse)

    async def sneaky(request: web.Request) -> web.Response:
        return web.json_response({"secret": True})

    app.router.add_get("/sneaky", sneaky)
    client = await aiohttp_client(app)
    assert (await client.get("/open")).status == 200
    assert (await client.get("/closed")).status == 401
    assert (await client.get("/sneaky")).status == 401
    assert (await client.get("/nowhere")).status == 401


def test_a_table_without_an_authenticator_takes_public_routes_only() -> None:
    with pytest.raises(ValueError, match="authenticator"):
        _table().install(web.Application(), None)
    table = RouteTable(tag="test")
    table.get("/open", public=True)(_ok)
    table.install(web.Application(), None)


def test_a_route_without_a_summary_or_docstring_is_refused() -> None:
    async def nameless(request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(ValueError, match="summary"):
        RouteTable(tag="test").get("/x", role=Role.MEMBER)(nameless)


def test_a_route_says_who_may_call_it_unless_it_is_public() -> None:
    with pytest.raises(ValueError, match="who may call it"):
        RouteTable(tag="test").get("/x")(_ok)
    with pytest.raises(ValueError, match="public route takes no role"):
        RouteTable(tag="test").get("/x", public=True, role=Role.MEMBER)(_ok)
    with pytest.raises(ValueError, match="public route takes no role"):
        RouteTable(tag="test").get("/x", public=True, scope="jobs:read")(_ok)


def test_path_parameters_must_be_declared() -> None:
    with pytest.raises(ValueError, match="path parameter"):
        RouteTable(tag="test").get("/jobs/{job_id}", role=Role.MEMBER)(_ok)
    with pytest.raises(ValueError, match="path parameter"):
        RouteTable(tag="test").get(
            "/jobs", role=Role.MEMBER, parameters=[Parameter("job_id", "path", {})]
        )(_ok)
    RouteTable(tag="test").get(
        "/jobs/{job_id}", role=Role.MEMBER, parameters=[Parameter("job_id", "path", {})]
    )(_ok)


def test_a_route_declared_twice_is_refused() -> None:
    table = RouteTable(tag="test")
    table.get("/x", role=Role.MEMBER, answers={200: Answer("OK")})(_ok)
    with pytest.raises(ValueError, match="twice"):
        table.get("/x", name="other", role=Role.MEMBER)(_ok_closed)
    with pytest.raises(ValueError, match="already"):
        table.post("/y", role=Role.MEMBER)(_ok)
