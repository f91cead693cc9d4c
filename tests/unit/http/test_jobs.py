"""The /v1/jobs routes: what a client may send (and is refused), listing, cursors, cancel."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from yarl import URL

from conveyor.announcements import MemoryAnnouncements
from conveyor.db import make_engine, make_sessionmaker
from tests import stack as stacks
from tests.conftest import _stack
from tests.stack import Stack
from tests.unit.http.test_errors import fields, problem, submit
from tests.unit.http.walk import routes_of

# --- numbers are numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "system.sleep", "payload": {"seconds": True}}, "payload.seconds"),
        ({"type": "system.sleep", "payload": {"steps": False}}, "payload.steps"),
        ({"type": "system.fail", "payload": {"failures": True}}, "payload.failures"),
        ({"type": "system.echo", "delay_seconds": True}, "delay_seconds"),
        ({"type": "system.echo", "delay_seconds": False}, "delay_seconds"),
    ],
)
async def test_a_boolean_where_a_number_belongs_is_unprocessable(
    embedded_stack: Stack, body: dict[str, Any], field: str
) -> None:
    response = await submit(embedded_stack, body)
    assert fields(await problem(response, 422)) == [field]


async def test_an_echo_payload_keeps_its_booleans(embedded_stack: Stack) -> None:
    job = await embedded_stack.submit("system.echo", {"yes": True, "n": 1})
    assert job["payload"] == {"yes": True, "n": 1}


# --- query parameters ------------------------------------------------------------------------


async def test_an_unknown_query_parameter_is_unprocessable_on_every_v1_route(
    embedded_stack: Stack,
) -> None:
    found = [f for f in routes_of(embedded_stack.client.app) if f.prefix == "/v1"]
    assert {(f.method, f.path) for f in found} >= {
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/{job_id}"),
    }
    for route in found:
        response = await embedded_stack.client.request(
            route.method,
            route.url(),
            params={"bogus": "1"},
            headers=embedded_stack.headers(embedded_stack.admin_token),  # every role's routes
        )
        if route.method == "HEAD":  # no body to read
            assert response.status == 422
            continue
        body = await problem(response, 422)
        assert fields(body) == ["bogus"], (route.method, route.path)
        assert "bogus" in body["detail"]


async def test_a_misspelt_parameter_is_named_with_the_ones_the_route_takes(
    embedded_stack: Stack,
) -> None:
    job = await embedded_stack.submit("system.echo", {})
    for path, query, declared in [
        ("/v1/jobs", {"limt": "5", "status": "queued"}, "limit"),
        (f"/v1/jobs/{job['id']}", {"wiat": "5"}, "wait"),
    ]:
        response = await embedded_stack.client.get(
            path, params=query, headers=embedded_stack.headers()
        )
        body = await problem(response, 422)
        assert fields(body) == [next(iter(query))]
        assert declared in body["detail"]


async def test_a_single_valued_parameter_given_twice_is_unprocessable(
    embedded_stack: Stack,
) -> None:
    job = await embedded_stack.submit("system.echo", {})
    for url in ["/v1/jobs?limit=1&limit=2", f"/v1/jobs/{job['id']}?wait=0&wait=1"]:
        response = await embedded_stack.client.get(url, headers=embedded_stack.headers())
        assert fields(await problem(response, 422)) == [url.rsplit("&", 1)[1].split("=")[0]]


async def test_list_filters_may_still_be_repeated(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get(
        "/v1/jobs?status=queued&status=succeeded&type=system.echo&type=system.fail",
        headers=embedded_stack.headers(),
    )
    assert response.status == 200


async def test_a_request_without_a_token_is_refused_before_its_query_is_read(
    embedded_stack: Stack,
) -> None:
    response = await embedded_stack.client.get("/v1/jobs", params={"bogus": "1"})
    await problem(response, 401)


# --- cancel ----------------------------------------------------------------------------------


async def test_cancelling_a_running_job_answers_202_with_its_location_and_a_poll_hint(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    job = await stack.submit("system.sleep", {"seconds": 30, "steps": 300})
    await stack.wait_for(job["id"], "running")
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert response.status == 202
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["cancel_requested"] is True
    assert (await stack.wait_for(job["id"], "cancelled"))["status"] == "cancelled"


async def test_cancelling_a_waiting_job_answers_200_without_a_poll_hint(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    response = await submit(stack, {"type": "system.echo", "delay_seconds": 600})
    job = await response.json()
    assert job["status"] == "scheduled"
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    assert "Retry-After" not in response.headers


# --- cursors ---------------------------------------------------------------------------------


async def _page(stack: Stack, query: str, *, expect: int = 200) -> dict[str, Any]:
    response = await stack.client.get(f"/v1/jobs?{query}", headers=stack.headers())
    body = await response.json(content_type=None)
    assert response.status == expect, body
    return body  # type: ignore[no-any-return]


async def test_a_cursor_this_server_did_not_issue_is_a_bad_request(embedded_stack: Stack) -> None:
    stack = embedded_stack
    ids = [(await stack.submit("system.echo", {"n": n}))["id"] for n in range(3)]
    # What a cursor used to be, and what a client could make up: the base64 of a job id.
    made_up = base64.urlsafe_b64encode(uuid.UUID(ids[1]).bytes).decode().rstrip("=")
    response = await stack.client.get(
        "/v1/jobs", params={"cursor": made_up}, headers=stack.headers()
    )
    assert fields(await problem(response, 400)) == ["cursor"]


async def test_an_altered_cursor_is_a_bad_request(embedded_stack: Stack) -> None:
    stack = embedded_stack
    for n in range(3):
        await stack.submit("system.echo", {"n": n})
    cursor = (await _page(stack, "limit=1"))["next_cursor"]
    assert (await _page(stack, f"limit=1&cursor={cursor}"))["items"]
    for position in (0, len(cursor) // 2, len(cursor) - 1):
        changed = "A" if cursor[position] != "A" else "B"
        altered = cursor[:position] + changed + cursor[position + 1 :]
        response = await stack.client.get(
            "/v1/jobs", params={"limit": "1", "cursor": altered}, headers=stack.headers()
        )
        assert fields(await problem(response, 400)) == ["cursor"], position
    for extended in (cursor + "A", cursor[:-1], cursor + "=" * 2):
        response = await stack.client.get(
            "/v1/jobs", params={"limit": "1", "cursor": extended}, headers=stack.headers()
        )
        assert fields(await problem(response, 400)) == ["cursor"], extended


async def test_a_cursor_is_bound_to_the_filters_it_was_issued_for(embedded_stack: Stack) -> None:
    stack = embedded_stack
    for type_ in ["system.echo", "system.fail", "system.echo", "system.fail"]:
        await stack.submit(type_, {"failures": 0} if type_ == "system.fail" else {})
    cursor = (await _page(stack, "type=system.echo&limit=1"))["next_cursor"]
    # The same filters, written another way, keep it valid; other filters do not.
    again = f"type=system.echo&type=system.echo&limit=1&cursor={cursor}"
    assert (await _page(stack, again))["items"]
    for query in ["", "type=system.fail", "type=system.echo,system.fail", "status=queued"]:
        body = await _page(stack, f"{query}&limit=1&cursor={cursor}", expect=400)
        assert fields(body) == ["cursor"], query


# --- what a page holds, and how large it gets ------------------------------------------------

CONTENT = {"payload", "result"}


async def _finished_echo(stack: Stack, payload: dict[str, Any]) -> dict[str, Any]:
    return await stack.submit("system.echo", payload, expect=200, Prefer="wait=10")


async def test_list_items_leave_out_payload_and_result_unless_asked_for(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    job = await _finished_echo(stack, {"hello": "world"})
    [item] = (await _page(stack, ""))["items"]
    assert item["id"] == job["id"] and item["status"] == "succeeded"
    assert not CONTENT & set(item) and "omitted" not in item
    assert set(item) == set(job) - CONTENT
    for query, shown in [
        ("include=payload", {"payload"}),
        ("include=result", {"result"}),
        ("include=payload,result", CONTENT),
        ("include=result&include=payload", CONTENT),
    ]:
        [item] = (await _page(stack, query))["items"]
        assert CONTENT & set(item) == shown, query
        for name in shown:
            assert item[name] == {"hello": "world"}
        assert "omitted" not in item


async def test_an_unknown_include_is_unprocessable(embedded_stack: Stack) -> None:
    for query in ["include=error", "include=payload,secrets", "include=PAYLOAD"]:
        body = await _page(embedded_stack, query, expect=422)
        assert fields(body) == ["include"], query


async def test_pages_with_include_have_a_smaller_cap_named_in_the_problem(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    cap = stack.settings.max_include_page_size
    assert cap < stack.settings.max_page_size
    await _page(stack, f"limit={stack.settings.max_page_size}")
    await _page(stack, f"limit={cap}&include=payload")
    body = await _page(stack, f"limit={cap + 1}&include=payload", expect=422)
    assert fields(body) == ["limit"]
    assert f"1 to {cap} with include=payload" in body["errors"][0]["message"]
    assert "CONVEYOR_MAX_INCLUDE_PAGE_SIZE" in body["detail"]


@pytest.fixture
async def small_pages(aiohttp_client: Any, sqlite_url: str) -> AsyncIterator[Stack]:
    """The embedded stack with the smallest response size limit there is."""
    settings = stacks.test_settings(
        database_url=sqlite_url,
        broker_url="stub://",
        redis_url=None,
        max_response_bytes=LIMIT,
        public_url="https://jobs.example.com/conveyor/",
    )
    engine = make_engine(sqlite_url, pool_size=10)
    async for stack in _stack(
        settings, make_sessionmaker(engine), MemoryAnnouncements(), aiohttp_client
    ):
        yield stack
    engine.dispose()


LIMIT = 64 * 1024


async def _walk(stack: Stack, query: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Every item of a listing, by following its Link headers; and each page's size."""
    items: list[dict[str, Any]] = []
    sizes: list[int] = []
    url = f"/v1/jobs?{query}"
    for _ in range(100):
        response = await stack.client.get(url, headers=stack.headers())
        raw = await response.read()
        assert response.status == 200, raw
        sizes.append(len(raw))
        page = json.loads(raw)
        items.extend(page["items"])
        if page["next_cursor"] is None:
            assert "Link" not in response.headers
            return items, sizes
        link = re.fullmatch(r'<(.+)>; rel="next"', response.headers["Link"])
        assert link is not None
        assert link.group(1).startswith("https://jobs.example.com/conveyor/v1/jobs?")
        url = URL(link.group(1)).path_qs.removeprefix("/conveyor")
    raise AssertionError("the listing did not end")


async def test_a_page_that_would_pass_the_size_limit_ends_sooner_and_the_rest_follows(
    small_pages: Stack,
) -> None:
    stack = small_pages
    ids = [(await _finished_echo(stack, {"n": n, "text": "x" * 10_000}))["id"] for n in range(12)]
    items, sizes = await _walk(stack, "include=payload,result&limit=100")
    assert [item["id"] for item in items] == ids[::-1]  # every job, once, in order
    assert all(item["payload"]["text"] == "x" * 10_000 for item in items)
    assert max(sizes) <= LIMIT
    assert len(sizes) > 1  # the pages had to be cut
    summaries, sizes = await _walk(stack, "limit=100")
    assert [item["id"] for item in summaries] == ids[::-1] and sizes == [sizes[0]]


async def test_a_job_too_large_for_a_page_comes_without_its_content_and_says_so(
    small_pages: Stack,
) -> None:
    stack = small_pages
    small = await _finished_echo(stack, {"text": "small"})
    payload_only = await stack.submit("system.echo", {"text": "y" * 40_000}, expect=202)
    huge = await _finished_echo(stack, {"text": "x" * (LIMIT // 2)})  # payload + result > LIMIT
    await stack.wait_for(payload_only["id"], "succeeded")
    items, sizes = await _walk(stack, "include=payload,result")
    by_id = {item["id"]: item for item in items}
    assert list(by_id) == [huge["id"], payload_only["id"], small["id"]]
    assert max(sizes) <= LIMIT
    # The huge job alone: one of its two fields fits, the other is left out and named.
    assert len(by_id[huge["id"]]["omitted"]) == 1
    [left_out] = by_id[huge["id"]]["omitted"]
    assert left_out not in by_id[huge["id"]]
    assert by_id[huge["id"]][({"payload", "result"} - {left_out}).pop()] == huge["payload"]
    assert "omitted" not in by_id[small["id"]]
    assert by_id[small["id"]]["result"] == {"text": "small"}
    # Its full content is at its url.
    full = await stack.get(huge["id"])
    assert full["payload"] == full["result"] == huge["payload"]


# --- the next page's link --------------------------------------------------------------------


async def _link(stack: Stack, **headers: str) -> str:
    for n in range(2):
        await stack.submit("system.echo", {"n": n})
    response = await stack.client.get(
        "/v1/jobs?limit=1&type=system.echo", headers=stack.headers(**headers)
    )
    assert response.status == 200
    link = re.fullmatch(r'<(.+)>; rel="next"', response.headers["Link"])
    assert link is not None
    return link.group(1)


async def test_the_next_link_is_a_full_url_on_the_host_the_client_asked_for(
    embedded_stack: Stack,
) -> None:
    for host in ["jobs.example.org:8443", "127.0.0.1:8000", "[::1]:8000", "jobs.example.org"]:
        link = await _link(embedded_stack, Host=host)
        assert link.startswith(f"http://{host}/v1/jobs?limit=1&type=system.echo&cursor="), link


async def test_forwarded_headers_do_not_change_the_next_link(embedded_stack: Stack) -> None:
    link = await _link(
        embedded_stack,
        Host="jobs.example.org",
        **{"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
    )
    assert link.startswith("http://jobs.example.org/v1/jobs?")


async def test_a_host_header_that_is_no_host_gets_a_relative_link(embedded_stack: Stack) -> None:
    for host in ["h:99999", "a b", "ex>ample.org", "x;y", "user@host", "h/p"]:
        link = await _link(embedded_stack, Host=host)
        assert link.startswith("/v1/jobs?limit=1&type=system.echo&cursor="), (host, link)


async def test_the_next_link_is_under_the_public_url_when_one_is_set(small_pages: Stack) -> None:
    link = await _link(small_pages, Host="internal:8000")
    assert link.startswith("https://jobs.example.com/conveyor/v1/jobs?limit=1&type=system.echo&")
