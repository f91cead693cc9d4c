"""The /admin sub-app: an index page for admins, and every error as a small HTML page."""

from __future__ import annotations

from aiohttp import ClientResponse

from tests.stack import Stack


async def _page(response: ClientResponse, status: int) -> str:
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"].startswith("text/html")
    assert text.startswith("<!doctype html>")
    return text


async def test_an_admin_gets_the_index_page(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.get("/admin/", headers=stack.headers(stack.admin_token))
    text = await _page(response, 200)
    assert "<h1>Overview</h1>" in text
    assert response.headers["Cache-Control"] == "no-store"


async def test_a_member_is_forbidden(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.get("/admin/", headers=stack.headers(stack.member_token))
    text = await _page(response, 403)
    assert "403 Forbidden" in text
    assert "needs the operator role" in text


async def test_no_token_is_unauthorized_with_a_challenge(embedded_stack: Stack) -> None:
    # A GET goes to the sign-in form instead (tests/unit/http/test_browser_session.py).
    response = await embedded_stack.client.post("/admin/")
    text = await _page(response, 401)
    assert "401 Unauthorized" in text
    assert "sign in first: /app/login" in text
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="conveyor"'


async def test_a_bad_token_is_unauthorized(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get(
        "/admin/", headers={"Authorization": "Bearer not.a.jwt"}
    )
    await _page(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="conveyor", error="invalid_token"'


async def test_an_unknown_admin_page_is_not_found_for_an_admin(embedded_stack: Stack) -> None:
    stack = embedded_stack
    admin = stack.headers(stack.admin_token)
    text = await _page(await stack.client.get("/admin/x", headers=admin), 404)
    assert "404 Not Found" in text
    assert "no route matches /admin/x" in text
    # Authentication comes first: nothing about /admin is told to others.
    await _page(await stack.client.post("/admin/x"), 401)
    anonymous = await stack.client.get("/admin/x", allow_redirects=False)
    assert anonymous.status == 303
    await _page(await stack.client.get("/admin/x", headers=stack.headers()), 403)


async def test_a_wrong_method_is_not_allowed_as_a_page(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.post("/admin/", headers=stack.headers(stack.admin_token))
    await _page(response, 405)
    assert "GET" in response.headers["Allow"]


async def test_error_pages_escape_what_they_show(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.get(
        "/admin/%3Cscript%3Ealert(1)%3C/script%3E", headers=stack.headers(stack.admin_token)
    )
    text = await _page(response, 404)
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
