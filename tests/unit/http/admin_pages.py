"""Asking the admin's pages as the stack's admin, and reading their HTML unescaped (the
pages' tests match the text a person reads)."""

from __future__ import annotations

import html
from typing import Any

from aiohttp import ClientResponse

from tests.stack import Stack


async def html_of(response: ClientResponse, expected: int = 200) -> str:
    """The HTML of `response` (a page or a live part), unescaped, after checking its status."""
    text = await response.text()
    assert response.status == expected, text
    assert response.headers["Content-Type"].startswith("text/html")
    return html.unescape(text)


async def admin_get(stack: Stack, url: str, expected: int = 200, **params: Any) -> str:
    """The admin's page at `url` with the query `params`, answered with `expected`."""
    response = await stack.client.get(url, params=params, headers=stack.headers(stack.admin_token))
    return await html_of(response, expected)


async def admin_post(stack: Stack, url: str, form: dict[str, str], expected: int = 200) -> str:
    """The page the admin's post of `form` to `url` ends on, answered with `expected`."""
    response = await stack.client.post(url, data=form, headers=stack.headers(stack.admin_token))
    return await html_of(response, expected)
