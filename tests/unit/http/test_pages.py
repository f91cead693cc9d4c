"""The pages' shared parts: static files with cache headers, the CSP, the layout."""

from __future__ import annotations

from conveyor.http.pages import CSP, STATIC, asset, assets, static_url
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
