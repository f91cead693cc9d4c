"""The embedded mode end to end: HTTP → SQLite → stub broker → in-process worker → HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from conveyor.broker import to_dramatiq
from conveyor.services.jobs import JobMessage
from tests.stack import Stack, wait_until


async def _drain(stack: Stack) -> None:
    """Wait until the system queue (and its delay queue) is empty and the worker idle."""
    await asyncio.to_thread(stack.broker.join, "system", timeout=10_000, fail_fast=False)
    assert stack.worker is not None
    await asyncio.to_thread(stack.worker.join)


async def _until_status(stack: Stack, job_id: str, status: str) -> None:
    """Poll the row (a long poll would wait for the *next* change if it is there already)."""
    await asyncio.to_thread(wait_until, lambda: stack.row(job_id).status == status, 10)


def _parse_sse(text: str) -> list[tuple[str, dict[str, Any], int]]:
    """(event name, data, id) of each server-sent event of a finished stream."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        if "data" in fields:
            events.append((fields["event"], json.loads(fields["data"]), int(fields["id"])))
    return events


async def _events(stack: Stack, job_id: str, **headers: str) -> list[tuple[str, Any, int]]:
    response = await stack.client.get(f"/v1/jobs/{job_id}/events", headers=stack.headers(**headers))
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return _parse_sse(await asyncio.wait_for(response.text(), 20))


# --- running jobs ----------------------------------------------------------------------------


async def test_an_echo_job_succeeds_with_its_payload_as_result(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {"hello": "world", "n": [1, 2]})
    assert job["status"] == "queued"
    assert job["url"] == f"/v1/jobs/{job['id']}"
    done = await stack.wait_for(job["id"], "succeeded")
    assert done["result"] == {"hello": "world", "n": [1, 2]}
    assert done["attempts"] == 1
    assert done["progress"] == 1.0
    assert done["error"] is None
    assert done["finished_at"] is not None


async def test_submitting_answers_202_with_the_job_location(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.post(
        "/v1/jobs", json={"type": "system.echo", "payload": {}}, headers=stack.headers()
    )
    assert response.status == 202
    body = await response.json()
    assert response.headers["Location"] == f"/v1/jobs/{body['id']}"
    assert response.headers["Retry-After"] == "1"
    assert uuid.UUID(body["id"]).version == 7
    await stack.wait_for(body["id"], "succeeded")


async def test_prefer_wait_answers_200_with_the_finished_job(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.post(
        "/v1/jobs",
        json={"type": "system.echo", "payload": {"x": 1}},
        headers=stack.headers(Prefer="wait=5"),
    )
    body = await response.json()
    assert response.status == 200, body
    assert body["status"] == "succeeded"
    assert body["result"] == {"x": 1}
    assert response.headers["Preference-Applied"] == "wait=5"


async def test_a_failing_job_is_retried_until_it_succeeds(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.fail", {"failures": 2})
    done = await stack.wait_for(job["id"], "succeeded", "failed")
    assert done["status"] == "succeeded"
    assert done["attempts"] == 3
    assert done["result"] == {"attempts": 3}


async def test_a_job_out_of_retries_fails_and_is_dead_lettered(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.fail", {"failures": 10, "message": "nope"})
    done = await stack.wait_for(job["id"], "succeeded", "failed")
    assert done["status"] == "failed"
    assert done["attempts"] == 4  # the first attempt and three retries
    assert done["error"]["type"] == "RuntimeError"
    assert "nope" in done["error"]["message"]

    broker: Any = stack.broker

    def dead_letters() -> list[Any]:
        return [m for m in broker.dead_letters if m.args == (job["id"],)]

    # the consumer thread nacks the message after the actor returned
    dead = await asyncio.to_thread(wait_until, dead_letters, 5)
    assert len(dead) == 1
    assert dead[0].actor_name == "system.fail"


async def test_cancelling_a_running_job_stops_it(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.sleep", {"seconds": 30, "steps": 300})
    await _until_status(stack, job["id"], "running")
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert response.status == 202
    asked = await response.json()
    assert asked["cancel_requested"] is True
    done = await stack.wait_for(job["id"], "cancelled", within=5)
    assert done["error"]["type"] == "Cancelled"
    assert done["attempts"] == 1
    assert done["progress"] is None or done["progress"] < 0.5


async def test_a_job_cancelled_while_queued_never_runs(embedded_stack: Stack) -> None:
    stack = embedded_stack
    stack.stop_worker()
    job = await stack.submit("system.echo", {"n": 1})
    queue = stack.broker.queues["system"]  # type: ignore[attr-defined]
    await asyncio.to_thread(wait_until, lambda: queue.qsize() >= 1, 5)
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers())
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    stack.start_worker()
    await _drain(stack)
    row = stack.row(job["id"])
    assert row.status == "cancelled"
    assert row.attempts == 0
    assert row.started_at is None


async def test_a_duplicate_message_for_a_finished_job_is_skipped(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {"n": 1})
    await stack.wait_for(job["id"], "succeeded")
    await _drain(stack)
    duplicate = JobMessage(uuid.UUID(job["id"]), "system.echo", "system")
    stack.broker.enqueue(to_dramatiq(duplicate))
    await _drain(stack)
    row = stack.row(job["id"])
    assert row.status == "succeeded"
    assert row.attempts == 1
    assert stack.broker.dead_letters == []


async def test_a_message_without_a_job_id_is_dropped(embedded_stack: Stack) -> None:
    stack = embedded_stack
    message = to_dramatiq(JobMessage(uuid.uuid4(), "system.echo", "system"))
    stack.broker.enqueue(message.copy(args=("not-a-uuid",)))
    stack.broker.enqueue(message)  # a well-formed id of no job
    await _drain(stack)
    assert stack.broker.dead_letters == []
    job = await stack.submit("system.echo", {"still": "works"})
    assert (await stack.wait_for(job["id"], "succeeded"))["result"] == {"still": "works"}


async def test_the_history_of_a_retried_job_is_in_order(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.fail", {"failures": 2})
    events = await _events(stack, job["id"])  # streams until the job finishes
    statuses = [(data["status"], data["attempt"]) for kind, data, _ in events if kind == "status"]
    assert statuses == [
        ("queued", 0),
        ("running", 1),
        ("retrying", 1),
        ("running", 2),
        ("retrying", 2),
        ("running", 3),
        ("succeeded", 3),
    ]
    ids = [event_id for _, _, event_id in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(data["job_id"] == job["id"] for _, data, _ in events)
    assert "attempt 1 of 3" in events[2][1]["message"]


async def test_the_event_stream_resumes_after_last_event_id(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {})
    await stack.wait_for(job["id"], "succeeded")
    everything = await _events(stack, job["id"])
    assert [d["status"] for _, d, _ in everything] == ["queued", "running", "succeeded"]
    rest = await _events(stack, job["id"], **{"Last-Event-ID": str(everything[0][2])})
    assert rest == everything[1:]


async def test_the_event_stream_reports_progress(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.sleep", {"seconds": 0.1, "steps": 4})
    events = await _events(stack, job["id"])
    progress = [d["progress"] for kind, d, _ in events if kind == "progress"]
    assert progress == [0.25, 0.5, 0.75, 1.0]
    assert events[-1][1]["status"] == "succeeded"


# --- reading, listing, ownership --------------------------------------------------------------


async def test_get_with_wait_until_finished_answers_with_the_finished_job(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    job = await stack.submit("system.sleep", {"seconds": 0.2, "steps": 2})
    done = await stack.get(job["id"], wait="10", until="finished")
    assert done["status"] == "succeeded"


async def test_a_member_cannot_see_another_members_job_but_an_admin_can(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {})
    response = await stack.client.get(
        f"/v1/jobs/{job['id']}", headers=stack.headers(stack.other_token)
    )
    assert response.status == 404
    seen = await stack.get(job["id"], token=stack.admin_token)
    assert seen["id"] == job["id"]


async def test_an_idempotent_replay_returns_the_first_job(embedded_stack: Stack) -> None:
    stack = embedded_stack
    first = await stack.submit("system.echo", {"a": 1}, **{"Idempotency-Key": "k-1"})
    response = await stack.client.post(
        "/v1/jobs",
        json={"type": "system.echo", "payload": {"a": 1}},
        headers=stack.headers(**{"Idempotency-Key": "k-1"}),
    )
    assert response.status == 202
    assert response.headers["Idempotent-Replayed"] == "true"
    assert (await response.json())["id"] == first["id"]


async def test_listing_pages_through_the_jobs_newest_first(embedded_stack: Stack) -> None:
    stack = embedded_stack
    created = [(await stack.submit("system.echo", {"i": i}))["id"] for i in range(5)]
    seen: list[str] = []
    url = "/v1/jobs?limit=2"
    for _ in range(5):
        response = await stack.client.get(url, headers=stack.headers())
        assert response.status == 200
        page = await response.json()
        seen.extend(item["id"] for item in page["items"])
        if page["next_cursor"] is None:
            assert "Link" not in response.headers
            break
        link = re.fullmatch(r'<(.+)>; rel="next"', response.headers["Link"])
        assert link is not None
        absolute = URL(link.group(1))  # a full URL, on the host the request named
        assert absolute.origin() == stack.client.make_url("/").origin()
        url = absolute.path_qs
        assert f"cursor={page['next_cursor']}" in url
    assert seen == created[::-1]


# --- operational routes ----------------------------------------------------------------------


async def test_job_types_lists_the_system_jobs_with_json_schemas(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.get("/v1/job-types", headers=stack.headers())
    assert response.status == 200
    types = {t["name"]: t for t in (await response.json())["items"]}
    assert {"system.echo", "system.sleep", "system.fail"} <= set(types)
    sleep = types["system.sleep"]
    assert sleep["queue"] == "system"
    assert sleep["max_retries"] == 0
    assert sleep["time_limit_seconds"] == 3660
    assert sleep["payload_schema"]["type"] == "object"
    assert sleep["payload_schema"]["properties"]["seconds"]["type"] == "number"
    assert sleep["payload_schema"]["properties"]["steps"]["type"] == "integer"
    assert types["system.fail"]["max_retries"] == 3
    assert "failures" in types["system.fail"]["payload_schema"]["properties"]
    assert types["system.echo"]["payload_schema"]["additionalProperties"] is True
    assert types["system.echo"]["description"].startswith("Return the payload unchanged")


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def test_the_openapi_document_describes_the_jobs_api(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get("/openapi.json")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document = json.loads(await response.read())
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events",
        "/v1/job-types",
    } <= set(paths)
    assert {"get", "post"} <= set(paths["/v1/jobs"])
    body = paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    variants = {v["title"]: v for v in body["oneOf"]}
    assert {"system.echo", "system.sleep", "system.fail"} <= set(variants)
    for name, variant in variants.items():
        assert variant["properties"]["type"] == {"const": name}
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


async def test_healthz_answers_without_a_token(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_is_ready_in_the_embedded_mode(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get("/readyz")
    body = await response.json()
    assert response.status == 200, body
    assert body["checks"]["database"] == "ok"


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_requests_by_route_template(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {})
    await stack.wait_for(job["id"], "succeeded")
    response = await stack.client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    samples = _samples(text)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value(
        "conveyor_http_requests_total", route="/v1/jobs/{job_id}", method="GET", status="200"
    )
    assert value("conveyor_http_requests_total", route="/v1/jobs", method="POST", status="202") == 1
    assert value("conveyor_jobs_submitted_total", type="system.echo") == 1
    assert value("conveyor_jobs_finished_total", type="system.echo", status="succeeded") == 1
    assert job["id"] not in text  # ids never become label values


async def test_metrics_label_unknown_routes_as_unmatched(embedded_stack: Stack) -> None:
    stack = embedded_stack
    for path in ("/nope", f"/nope/{uuid.uuid4()}"):
        assert (await stack.client.get(path)).status == 404
    samples = _samples(await (await stack.client.get("/metrics")).text())
    key = frozenset({"route": "unmatched", "method": "GET", "status": "404"}.items())
    assert samples[("conveyor_http_requests_total", key)] == 2
