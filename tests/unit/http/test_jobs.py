"""The /v1/jobs routes: what a client may send (and is refused), listing, cursors, cancel."""

from __future__ import annotations

from typing import Any

import pytest

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
            route.method, route.url(), params={"bogus": "1"}, headers=embedded_stack.headers()
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
