"""/openapi.json is generated from the route tables: every route, its real limits, its errors."""

from __future__ import annotations

import json
import re
from typing import Any

from conveyor.http.app import route_tables
from conveyor.http.openapi import build_openapi
from conveyor.http.routes import HTML, PROBLEM_JSON
from conveyor.models import JobStatus
from conveyor.registry import JOBS
from tests import stack as stacks
from tests.stack import Stack
from tests.unit.http.walk import routes_of


async def _document(stack: Stack) -> dict[str, Any]:
    response = await stack.client.get("/openapi.json")
    assert response.status == 200
    return json.loads(await response.read())  # type: ignore[no-any-return]


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }


def _parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    [parameter] = [p for p in operation["parameters"] if p["name"] == name]
    return parameter  # type: ignore[no-any-return]


async def test_every_route_is_documented_and_every_operation_is_routed(
    embedded_stack: Stack,
) -> None:
    operations = _operations(await _document(embedded_stack))
    # HEAD is answered wherever GET is (aiohttp adds it); the document leaves it implied.
    routed = {(f.method, f.path) for f in routes_of(embedded_stack.client.app)}
    routed = {(m, p) for m, p in routed if m != "HEAD"}
    assert routed - set(operations) == set(), "routes missing from /openapi.json"
    assert set(operations) - routed == set(), "documented operations that no route answers"
    assert ("GET", "/admin/") in operations
    assert {("GET", "/healthz"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}")} <= routed


async def test_the_list_limits_are_the_settings(embedded_stack: Stack) -> None:
    settings = embedded_stack.settings
    listing = _operations(await _document(embedded_stack))[("GET", "/v1/jobs")]
    limit = _parameter(listing, "limit")["schema"]
    assert limit["type"] == "integer"
    assert limit["minimum"] == 1
    assert limit["maximum"] == settings.max_page_size
    assert limit["default"] == settings.default_page_size


async def test_the_wait_limit_is_the_settings(embedded_stack: Stack) -> None:
    settings = embedded_stack.settings
    operations = _operations(await _document(embedded_stack))
    wait = _parameter(operations[("GET", "/v1/jobs/{job_id}")], "wait")["schema"]
    assert (wait["minimum"], wait["maximum"]) == (0, settings.max_wait_seconds)
    prefer = _parameter(operations[("POST", "/v1/jobs")], "Prefer")
    assert prefer["in"] == "header"
    assert f"at most {settings.max_wait_seconds:g}" in prefer["description"]


def test_the_limits_follow_other_settings() -> None:
    settings = stacks.test_settings(max_page_size=123, default_page_size=7, max_wait_seconds=9.5)
    operations = _operations(json.loads(build_openapi(settings, JOBS, route_tables())))
    limit = _parameter(operations[("GET", "/v1/jobs")], "limit")["schema"]
    assert (limit["maximum"], limit["default"]) == (123, 7)
    wait = _parameter(operations[("GET", "/v1/jobs/{job_id}")], "wait")["schema"]
    assert wait["maximum"] == 9.5


def test_the_include_cap_and_the_page_bound_are_the_settings() -> None:
    settings = stacks.test_settings(max_include_page_size=42, max_response_bytes=123_456)
    document = json.loads(build_openapi(settings, JOBS, route_tables()))
    listing = _operations(document)[("GET", "/v1/jobs")]
    limit = _parameter(listing, "limit")["description"]
    assert "or 42 with `include`" in limit and "123456 bytes" in limit
    include = _parameter(listing, "include")
    assert (include["style"], include["explode"]) == ("form", False)
    assert include["schema"]["items"]["enum"] == ["payload", "result"]
    assert "cursor" in {p["name"] for p in listing["parameters"]}


def test_list_items_are_documented_without_required_payload_and_result() -> None:
    document = json.loads(build_openapi(stacks.test_settings(), JOBS, route_tables()))
    schemas = document["components"]["schemas"]
    page = schemas["JobPage"]["properties"]["items"]["items"]
    item = schemas[page["$ref"].rsplit("/", 1)[1]]
    assert {"payload", "result", "omitted"} <= set(item["properties"])
    assert not {"payload", "result", "omitted"} & set(item.get("required", []))
    assert "payload" in schemas["JobOut"]["required"]


async def test_the_status_filter_lists_every_status_comma_separated(embedded_stack: Stack) -> None:
    listing = _operations(await _document(embedded_stack))[("GET", "/v1/jobs")]
    status = _parameter(listing, "status")
    assert status["in"] == "query"
    assert (status["style"], status["explode"]) == ("form", False)  # ?status=queued,running
    assert status["schema"]["type"] == "array"
    assert status["schema"]["items"]["enum"] == [s.value for s in JobStatus]


async def test_the_idempotency_key_is_1_to_255_printable_ascii(embedded_stack: Stack) -> None:
    submit = _operations(await _document(embedded_stack))[("POST", "/v1/jobs")]
    key = _parameter(submit, "Idempotency-Key")
    assert key["in"] == "header"
    schema = key["schema"]
    assert (schema["minLength"], schema["maxLength"]) == (1, 255)
    pattern = re.compile(schema["pattern"])
    for good in ["7d1c5c0e-order-1234", "a b ~!", "x"]:
        assert pattern.search(good), good
    for bad in ["ключ", "a\tb", "a\x7fb"]:
        assert not pattern.search(bad), bad


async def test_every_operation_documents_500_and_503(embedded_stack: Stack) -> None:
    for (method, path), operation in _operations(await _document(embedded_stack)).items():
        responses = operation["responses"]
        assert {"500", "503"} <= set(responses), (method, path)
        if path == "/readyz":
            continue  # its 503 is its own answer: not ready
        assert "Retry-After" in responses["503"]["headers"], (method, path)


async def test_errors_are_documented_in_each_app_s_media_type(embedded_stack: Stack) -> None:
    for (method, path), operation in _operations(await _document(embedded_stack)).items():
        expected = HTML if path.startswith(("/admin/", "/app/")) else PROBLEM_JSON
        for status, response in operation["responses"].items():
            if int(status) >= 400 and (path, status) != ("/readyz", "503"):
                assert list(response["content"]) == [expected], (method, path, status)
                if expected == PROBLEM_JSON:
                    schema = response["content"][expected]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Problem"}


async def test_the_documented_errors_of_the_jobs_api(embedded_stack: Stack) -> None:
    operations = _operations(await _document(embedded_stack))
    expected = {
        ("POST", "/v1/jobs"): {"400", "401", "403", "408", "409", "413", "422"},
        ("GET", "/v1/jobs"): {"400", "401", "403", "422"},
        ("GET", "/v1/jobs/{job_id}"): {"401", "403", "404", "422"},
        ("POST", "/v1/jobs/{job_id}/cancel"): {"401", "403", "404", "409", "422"},
        ("GET", "/v1/jobs/{job_id}/events"): {"401", "403", "404", "422", "429"},
        ("GET", "/v1/job-types"): {"401", "403", "422"},
    }
    for key, statuses in expected.items():
        errors = {s for s in operations[key]["responses"] if s.startswith("4")}
        assert errors == statuses, key


async def test_security_follows_the_public_flag(embedded_stack: Stack) -> None:
    public = {
        (f.method, f.path): f.spec
        for f in routes_of(embedded_stack.client.app)
        if f.spec is not None and f.spec.public
    }
    for key, operation in _operations(await _document(embedded_stack)).items():
        if key in public:
            assert operation["security"] == [], key
            # A login refused is a 401 of its own, not the bearer token's.
            assert ("401" in operation["responses"]) == (401 in public[key].errors), key
        else:
            assert operation["security"] == [{"bearer": []}], key
            assert "401" in operation["responses"], key
    assert "bearer" in (await _document(embedded_stack))["components"]["securitySchemes"]


async def test_the_admin_page_is_documented_as_html(embedded_stack: Stack) -> None:
    index = _operations(await _document(embedded_stack))[("GET", "/admin/")]
    assert list(index["responses"]["200"]["content"]) == [HTML]
    assert {"401", "403"} <= set(index["responses"])


async def test_the_media_types_of_the_operational_and_streaming_answers(
    embedded_stack: Stack,
) -> None:
    operations = _operations(await _document(embedded_stack))

    def media(key: tuple[str, str]) -> list[str]:
        return list(operations[key]["responses"]["200"]["content"])

    assert media(("GET", "/v1/jobs/{job_id}/events")) == ["text/event-stream"]
    assert media(("GET", "/metrics"))[0].startswith("text/plain; version=")
    assert media(("GET", "/v1/jobs")) == ["application/json"]
    response = await embedded_stack.client.get("/metrics")
    assert response.headers["Content-Type"].startswith(media(("GET", "/metrics"))[0])


async def test_every_v1_operation_documents_the_422_of_an_unknown_query_parameter(
    embedded_stack: Stack,
) -> None:
    for (_, path), operation in _operations(await _document(embedded_stack)).items():
        if path.startswith("/v1/"):
            assert "unknown query parameter" in operation["responses"]["422"]["description"]
