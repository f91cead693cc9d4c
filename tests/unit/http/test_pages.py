"""The pages' shared parts: static files with cache headers, the CSP, the layout."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlencode

from conveyor.http.pages import CSP, MAX_FORM_BYTES, STATIC, asset, assets, environment, static_url
from tests.stack import Stack


async def test_static_files_are_cached_for_a_year_when_asked_for_by_their_hash(
    embedded_stack: Stack,
) -> None:
    client = embedded_stack.client
    url = static_url("conveyor.css")
    response = await client.get(url)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/css")
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    etag = response.headers["ETag"]
    again = await client.get(url, headers={"If-None-Match": etag})
    assert again.status == 304
    stale = await client.get("/static/conveyor.css?v=old")
    assert stale.status == 200
    assert stale.headers["Cache-Control"] == "no-cache"


async def test_only_plain_static_file_names_are_served(embedded_stack: Stack) -> None:
    client = embedded_stack.client
    for name in ("missing.css", "..%2Fsettings.py", ".hidden"):
        response = await client.get(f"/static/{name}")
        assert response.status == 404, name
    assert asset("../settings.py") is None


async def test_unknown_static_names_keep_no_memory(embedded_stack: Stack) -> None:
    """The table of files is built once from the folder; a name not in it adds nothing."""
    client = embedded_stack.client
    for i in range(20):
        assert (await client.get(f"/static/nothing-{i}.css")).status == 404
    assert set(assets()) == {p.name for p in STATIC.iterdir() if p.is_file()}
    assert {"conveyor.css", "conveyor.js"} <= set(assets())


async def test_pages_forbid_inline_script_and_framing(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get(
        "/admin/", headers={"Authorization": f"Bearer {embedded_stack.admin_token}"}
    )
    assert response.status == 200
    assert response.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert response.headers["Cache-Control"] == "no-store"
    text = await response.text()
    assert static_url("conveyor.css") in text
    assert "<script>" not in text


def test_prose_shows_code_spans_as_code_and_escapes_the_rest() -> None:
    template = environment().from_string("{{ text|prose }}")
    rendered = template.render(text="Fail the first `failures` attempts <b>now</b> `<x>`")
    assert rendered == (
        "Fail the first <code>failures</code> attempts &lt;b&gt;now&lt;/b&gt; "
        "<code>&lt;x&gt;</code>"
    )
    assert environment().from_string("{{ text|prose }}").render(text=None) == ""


async def test_a_form_past_its_size_is_413_with_or_without_a_length(
    embedded_stack: Stack,
) -> None:
    """MAX_FORM_BYTES counts the bytes that arrive: a chunked body has no Content-Length to
    check first (below the app's own body limit, so only the form's limit refuses it)."""
    stack = embedded_stack
    body = urlencode({"payload": '{"a": "' + "x" * (MAX_FORM_BYTES + 1024) + '"}'}).encode()
    assert len(body) < stack.settings.max_body_bytes
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    async def chunked(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 16 * 1024):
            yield data[start : start + 16 * 1024]

    url = "/app/jobs/new?type=system.echo"
    headers = {**stack.headers(), **form}
    for data in (body, chunked(body)):
        response = await stack.client.post(url, data=data, headers=headers)
        assert response.status == 413, await response.text()
    # A small form sent either way is read.
    small = urlencode({"payload": '{"a": 1}'}).encode()
    for data in (small, chunked(small)):
        response = await stack.client.post(url, data=data, headers=headers, allow_redirects=False)
        assert response.status == 303, await response.text()


def test_row_headers_have_no_column_head_background() -> None:
    """`<th scope="row">` in a table's body (the overview's queues, say) reads as the row's
    name, not as a grey column head."""
    css = STATIC.joinpath("conveyor.css").read_text()
    found = re.findall(r"([^{}]+)\{([^}]*)\}", css)
    rules = {selector.strip(): body.strip() for selector, body in found}
    assert "background: none" in rules["tbody th"]
