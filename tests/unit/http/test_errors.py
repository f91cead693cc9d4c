"""Every error answer is an RFC 9457 problem with the right status, never a 500."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

import jwt
from aiohttp import ClientResponse
from sqlalchemy import update

from conveyor.db import transaction
from conveyor.models import Role, User
from conveyor.security.signing import KeySet, SigningKey
from conveyor.services.auth import TokenConfig, TokenVerifier, issue_token
from conveyor.services.users import create_user
from tests.stack import Stack


async def problem(response: ClientResponse, status: int) -> dict[str, Any]:
    """The problem body, after checking the status, media type and RFC 9457 fields."""
    body = await response.json(content_type=None)
    assert response.status == status, body
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str) and body["title"]
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    return body  # type: ignore[no-any-return]


def fields(body: dict[str, Any]) -> list[str]:
    return [error["field"] for error in body.get("errors", [])]


async def post_jobs(stack: Stack, data: bytes | str, **headers: str) -> ClientResponse:
    return await stack.client.post(
        "/v1/jobs",
        data=data,
        headers=stack.headers(**{"Content-Type": "application/json", **headers}),
    )


async def submit(stack: Stack, body: Any, **headers: str) -> ClientResponse:
    return await stack.client.post("/v1/jobs", json=body, headers=stack.headers(**headers))


# --- request bodies --------------------------------------------------------------------------


async def test_a_malformed_body_is_a_bad_request(embedded_stack: Stack) -> None:
    for data in [b"{not json", b"", b'{"type": "system.echo"', b"\xff\xfe", b"[1, 2"]:
        body = await problem(await post_jobs(embedded_stack, data), 400)
        assert "JSON" in body["detail"], data


async def test_non_standard_json_numbers_are_a_bad_request(embedded_stack: Stack) -> None:
    for literal in ["NaN", "Infinity", "-Infinity"]:
        data = '{"type": "system.echo", "payload": {"x": ' + literal + "}}"
        await problem(await post_jobs(embedded_stack, data), 400)


async def test_a_missing_type_is_unprocessable_and_names_the_field(embedded_stack: Stack) -> None:
    body = await problem(await submit(embedded_stack, {"payload": {}}), 422)
    assert fields(body) == ["type"]


async def test_a_body_of_the_wrong_shape_is_unprocessable(embedded_stack: Stack) -> None:
    cases: list[tuple[Any, str]] = [
        ([], "body"),
        ("system.echo", "body"),
        ({"type": "", "payload": {}}, "type"),
        ({"type": 3}, "type"),
        ({"type": "x" * 201}, "type"),
        ({"type": "system.echo", "payload": []}, "payload"),
        ({"type": "system.echo", "payload": None}, "payload"),
        ({"type": "system.echo", "priority": 1}, "priority"),
    ]
    for document, field in cases:
        body = await problem(await submit(embedded_stack, document), 422)
        assert field in fields(body), (document, body)


async def test_an_unknown_type_is_unprocessable_and_lists_the_known_ones(
    embedded_stack: Stack,
) -> None:
    body = await problem(await submit(embedded_stack, {"type": "system.nope"}), 422)
    assert "system.nope" in body["detail"]
    for known in ("system.echo", "system.fail", "system.sleep"):
        assert known in body["detail"]
    assert fields(body) == ["type"]


async def test_a_bad_payload_field_is_unprocessable_and_named(embedded_stack: Stack) -> None:
    cases: list[tuple[str, dict[str, Any], list[str]]] = [
        ("system.sleep", {"seconds": -1}, ["payload.seconds"]),
        ("system.sleep", {"seconds": "long"}, ["payload.seconds"]),
        ("system.sleep", {"steps": 0}, ["payload.steps"]),
        ("system.sleep", {"seconds": -1, "steps": 0}, ["payload.seconds", "payload.steps"]),
        ("system.fail", {"failures": 1000}, ["payload.failures"]),
        ("system.fail", {"bogus": True}, ["payload.bogus"]),
    ]
    for job_type, payload, expected in cases:
        response = await submit(embedded_stack, {"type": job_type, "payload": payload})
        body = await problem(response, 422)
        assert job_type in body["detail"]
        assert fields(body) == expected, (payload, body)
        assert all(error["message"] for error in body["errors"])


async def test_a_body_over_max_body_bytes_is_too_large(embedded_stack: Stack) -> None:
    assert embedded_stack.settings.max_body_bytes == 1024 * 1024
    padding = "x" * (2 * 1024 * 1024)
    data = json.dumps({"type": "system.echo", "payload": {"pad": padding}})
    await problem(await post_jobs(embedded_stack, data), 413)


async def test_a_body_just_under_the_limit_is_accepted(embedded_stack: Stack) -> None:
    padding = "x" * (512 * 1024)
    data = json.dumps({"type": "system.echo", "payload": {"pad": padding}})
    response = await post_jobs(embedded_stack, data)
    assert response.status == 202


async def test_an_idempotency_key_of_a_bad_length_is_a_bad_request(
    embedded_stack: Stack,
) -> None:
    for key in ["", "k" * 256]:
        response = await submit(embedded_stack, {"type": "system.echo"}, **{"Idempotency-Key": key})
        body = await problem(response, 400)
        assert fields(body) == ["Idempotency-Key"]


async def test_reusing_an_idempotency_key_for_another_request_is_unprocessable(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    await stack.submit("system.echo", {"a": 1}, **{"Idempotency-Key": "k"})
    response = await submit(
        stack, {"type": "system.echo", "payload": {"a": 2}}, **{"Idempotency-Key": "k"}
    )
    body = await problem(response, 422)
    assert fields(body) == ["Idempotency-Key"]


# --- job ids, queries and states --------------------------------------------------------------


async def test_a_job_id_that_is_not_a_uuid_is_not_found(embedded_stack: Stack) -> None:
    for method, path in [
        ("GET", "/v1/jobs/not-a-uuid"),
        ("GET", "/v1/jobs/12345"),
        ("POST", "/v1/jobs/not-a-uuid/cancel"),
        ("GET", "/v1/jobs/not-a-uuid/events"),
    ]:
        response = await embedded_stack.client.request(
            method, path, headers=embedded_stack.headers()
        )
        await problem(response, 404)


async def test_an_unknown_job_is_not_found(embedded_stack: Stack) -> None:
    job_id = uuid.uuid4()
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/events"),
    ]:
        response = await embedded_stack.client.request(
            method, path, headers=embedded_stack.headers(embedded_stack.admin_token)
        )
        await problem(response, 404)


async def test_another_members_job_is_not_found(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {})
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
    ]:
        response = await stack.client.request(
            method, path, headers=stack.headers(stack.other_token)
        )
        await problem(response, 404)


async def test_a_bad_cursor_is_a_bad_request(embedded_stack: Stack) -> None:
    for cursor in ["!!!", "abc", "é"]:
        response = await embedded_stack.client.get(
            "/v1/jobs", params={"cursor": cursor}, headers=embedded_stack.headers()
        )
        body = await problem(response, 400)
        assert fields(body) == ["cursor"]


async def test_bad_list_parameters_are_unprocessable(embedded_stack: Stack) -> None:
    cases = [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "99999999999999999999999"}, "limit"),
        ({"status": "done"}, "status"),
        ({"status": "queued,nope"}, "status"),
    ]
    for params, field in cases:
        response = await embedded_stack.client.get(
            "/v1/jobs", params=params, headers=embedded_stack.headers()
        )
        body = await problem(response, 422)
        assert fields(body) == [field], params


async def test_a_limit_of_superscript_digits_is_unprocessable(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get(
        "/v1/jobs", params={"limit": "²"}, headers=embedded_stack.headers()
    )
    await problem(response, 422)


async def test_bad_wait_parameters_are_unprocessable(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {})
    cases = [
        ({"wait": "-1"}, "wait"),
        ({"wait": "soon"}, "wait"),
        ({"wait": "61"}, "wait"),
        ({"wait": "nan"}, "wait"),
        ({"wait": "inf"}, "wait"),
        ({"until": "done"}, "until"),
    ]
    for params, field in cases:
        response = await stack.client.get(
            f"/v1/jobs/{job['id']}", params=params, headers=stack.headers()
        )
        body = await problem(response, 422)
        assert fields(body) == [field], params


async def test_cancelling_a_finished_job_is_a_conflict(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {})
    await stack.wait_for(job["id"], "succeeded")
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    body = await problem(response, 409)
    assert "succeeded" in body["detail"]


async def test_a_last_event_id_of_superscript_digits_is_ignored(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {})
    await stack.wait_for(job["id"], "succeeded")
    response = await stack.client.get(
        f"/v1/jobs/{job['id']}/events", headers=stack.headers(**{"Last-Event-ID": "²"})
    )
    assert response.status == 200
    assert "succeeded" in await response.text()


# --- routes and methods ----------------------------------------------------------------------


async def test_an_unknown_route_is_not_found(embedded_stack: Stack) -> None:
    for path in ["/nope", "/v1/nope", "/v1/jobs/a/b/c"]:
        response = await embedded_stack.client.get(path, headers=embedded_stack.headers())
        body = await problem(response, 404)
        assert path in body["detail"]


async def test_a_wrong_method_is_not_allowed(embedded_stack: Stack) -> None:
    cases = [
        ("DELETE", "/v1/jobs", {"GET", "POST"}),
        ("PUT", "/v1/jobs", {"GET", "POST"}),
        ("GET", f"/v1/jobs/{uuid.uuid4()}/cancel", {"POST"}),
        ("POST", "/healthz", {"GET"}),
    ]
    for method, path, allowed in cases:
        response = await embedded_stack.client.request(
            method, path, headers=embedded_stack.headers()
        )
        body = await problem(response, 405)
        assert method in body["detail"]
        assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}, path


# --- authentication --------------------------------------------------------------------------


def _tokens(stack: Stack) -> TokenConfig:
    return TokenConfig.of(stack.settings)


async def _unauthorized(response: ClientResponse, *, sent: bool = True) -> dict[str, Any]:
    """The 401 problem of `response`, whose challenge says the token was refused (when one
    was `sent`)."""
    body = await problem(response, 401)
    refused = ', error="invalid_token"' if sent else ""
    assert response.headers["WWW-Authenticate"] == f'Bearer realm="conveyor"{refused}'
    return body


async def test_a_missing_or_malformed_token_is_unauthorized(embedded_stack: Stack) -> None:
    authorizations = [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "Bearer not.a.jwt",
    ]
    routes = [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/job-types")]
    for authorization in authorizations:
        headers = {} if authorization is None else {"Authorization": authorization}
        for method, path in routes:
            response = await embedded_stack.client.request(method, path, headers=headers)
            await _unauthorized(response, sent=authorization == "Bearer not.a.jwt")


async def test_an_expired_token_is_unauthorized(embedded_stack: Stack) -> None:
    config = _tokens(embedded_stack)
    user_id = TokenVerifier(config).verify(embedded_stack.member_token).user_id
    expired = issue_token(config, user_id, ttl=-dt.timedelta(minutes=5))
    response = await embedded_stack.client.get(
        "/v1/jobs", headers={"Authorization": f"Bearer {expired}"}
    )
    body = await _unauthorized(response)
    assert "expired" in body["detail"]


async def test_a_token_not_issued_by_this_deployment_is_unauthorized(
    embedded_stack: Stack,
) -> None:
    config = _tokens(embedded_stack)
    user_id = TokenVerifier(config).verify(embedded_stack.member_token).user_id
    for change in [
        {"keys": KeySet.of([SigningKey.generate()])},
        {"issuer": "someone-else"},
        {"audience": "another-api"},
    ]:
        foreign = issue_token(dataclasses.replace(config, **change), user_id)
        response = await embedded_stack.client.get(
            "/v1/jobs", headers={"Authorization": f"Bearer {foreign}"}
        )
        await _unauthorized(response)


async def test_a_token_of_an_unknown_user_is_unauthorized(embedded_stack: Stack) -> None:
    token = issue_token(_tokens(embedded_stack), uuid.uuid4())
    response = await embedded_stack.client.get(
        "/v1/jobs", headers={"Authorization": f"Bearer {token}"}
    )
    await _unauthorized(response)


async def test_a_token_of_a_deactivated_user_is_unauthorized(embedded_stack: Stack) -> None:
    stack = embedded_stack
    user = create_user(stack.db, "gone@example.com", Role.MEMBER)
    with transaction(stack.db) as session:
        session.execute(update(User).where(User.id == user.id).values(active=False))
    token = issue_token(_tokens(stack), user.id)
    response = await stack.client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    await _unauthorized(response)


async def test_the_bearer_scheme_is_case_insensitive(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get(
        "/v1/jobs", headers={"Authorization": f"bearer {embedded_stack.member_token}"}
    )
    assert response.status == 200


async def test_the_published_keys_verify_this_deployments_tokens(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.get("/.well-known/jwks.json")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "public, max-age=300"
    document = await response.json()
    kid = jwt.get_unverified_header(stack.member_token)["kid"]
    (entry,) = (key for key in document["keys"] if key["kid"] == kid)
    assert "d" not in entry  # the public half only
    claims = jwt.decode(
        stack.member_token,
        jwt.PyJWK(entry),
        algorithms=[entry["alg"]],
        audience=stack.settings.jwt_audience,
        issuer=stack.settings.jwt_issuer,
    )
    assert claims["amr"] == ["cli"]
    spec = await (await stack.client.get("/openapi.json")).json()
    assert "/.well-known/jwks.json" in spec["paths"]


async def test_a_token_signed_by_a_key_no_longer_listed_is_unauthorized(
    embedded_stack: Stack,
) -> None:
    config = _tokens(embedded_stack)
    user_id = TokenVerifier(config).verify(embedded_stack.member_token).user_id
    retired = dataclasses.replace(config, keys=KeySet.of([SigningKey.generate("RS256")]))
    response = await embedded_stack.client.get(
        "/v1/jobs", headers={"Authorization": f"Bearer {issue_token(retired, user_id)}"}
    )
    body = await _unauthorized(response)
    assert "unknown key" in body["detail"]


async def test_operational_routes_need_no_token(embedded_stack: Stack) -> None:
    for path in ("/healthz", "/openapi.json", "/metrics", "/.well-known/jwks.json"):
        assert (await embedded_stack.client.get(path)).status == 200


# --- never a 500 -----------------------------------------------------------------------------


async def test_none_of_these_requests_was_answered_with_a_500(embedded_stack: Stack) -> None:
    stack = embedded_stack
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/jobs", {"data": b"[1, 2", "headers": stack.headers()}),
        ("POST", "/v1/jobs", {"json": {"type": None}, "headers": stack.headers()}),
        ("POST", "/v1/jobs", {"json": {"type": "x" * 300}, "headers": stack.headers()}),
        ("GET", "/v1/jobs?status=", {"headers": stack.headers()}),
        ("GET", "/v1/jobs?cursor=", {"headers": stack.headers()}),
        ("GET", "/v1/jobs/%00", {"headers": stack.headers()}),
        ("POST", "/v1/jobs/x/cancel", {"headers": stack.headers()}),
        ("PATCH", "/v1/jobs", {"headers": stack.headers()}),
        ("GET", "/v1", {}),
    ]
    for method, path, options in requests:
        response = await stack.client.request(method, path, **options)
        assert response.status < 500, (method, path, await response.text())
        if response.status >= 400:
            assert response.headers["Content-Type"].startswith("application/problem+json")


# --- found in review -------------------------------------------------------------------------


async def test_numbers_too_large_for_a_float_are_unprocessable(embedded_stack: Stack) -> None:
    # Valid JSON syntax, but a value that no column can store: 422 naming the field.
    body = await problem(
        await post_jobs(embedded_stack, '{"type": "system.echo", "payload": {"a": 1e400}}'), 422
    )
    assert fields(body) == ["payload"]
    body = await problem(
        await post_jobs(embedded_stack, '{"type": "system.echo", "delay_seconds": 1e400}'), 422
    )
    assert fields(body) == ["delay_seconds"]


async def test_a_nul_character_in_the_payload_is_unprocessable(embedded_stack: Stack) -> None:
    body = await problem(
        await submit(embedded_stack, {"type": "system.echo", "payload": {"a": "x\u0000"}}), 422
    )
    assert fields(body) == ["payload"]


async def test_an_idempotency_key_that_is_not_printable_ascii_is_a_bad_request(
    embedded_stack: Stack,
) -> None:
    for key in ["ключ", "a\tb"]:
        response = await submit(
            embedded_stack, {"type": "system.echo", "payload": {}}, **{"Idempotency-Key": key}
        )
        assert fields(await problem(response, 400)) == ["Idempotency-Key"]


async def test_a_limit_of_thousands_of_digits_is_unprocessable(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get(
        "/v1/jobs", params={"limit": "9" * 5000}, headers=embedded_stack.headers()
    )
    assert fields(await problem(response, 422)) == ["limit"]


async def test_an_unprintable_type_filter_is_unprocessable(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get(
        "/v1/jobs", params={"type": "a\u0000b"}, headers=embedded_stack.headers()
    )
    assert fields(await problem(response, 422)) == ["type"]


async def test_the_next_link_keeps_repeated_filters(embedded_stack: Stack) -> None:
    for type_ in ["system.echo", "system.echo", "system.fail"]:
        await embedded_stack.submit(type_, {})
    response = await embedded_stack.client.get(
        "/v1/jobs?type=system.echo&type=system.fail&limit=1", headers=embedded_stack.headers()
    )
    assert response.status == 200
    link = response.headers["Link"]
    assert "type=system.echo" in link and "type=system.fail" in link


async def test_events_of_a_finished_job_end_for_a_client_that_reconnects(
    embedded_stack: Stack,
) -> None:
    job = await embedded_stack.submit("system.echo", {}, expect=200, Prefer="wait=10")
    first = await embedded_stack.client.get(
        f"/v1/jobs/{job['id']}/events", headers=embedded_stack.headers()
    )
    ids = [line[4:] for line in (await first.text()).splitlines() if line.startswith("id: ")]
    for last in [ids[-1], "9" * 30, "99999999999999999999"]:
        again = await embedded_stack.client.get(
            f"/v1/jobs/{job['id']}/events",
            headers=embedded_stack.headers(**{"Last-Event-ID": last}),
        )
        assert again.status == 200
        assert "keep-alive" not in await again.text()  # it ended at once
