"""Request and response models, field-error paths, and the OpenAPI document builder."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from conveyor.errors import field_errors
from conveyor.http.app import route_tables
from conveyor.http.middleware import problem
from conveyor.http.openapi import build_openapi
from conveyor.http.schemas import JobOut, JobTypeOut, Problem, SubmitJob
from conveyor.models import Job
from conveyor.models.base import utcnow
from conveyor.registry import JOBS, Payload, Registry, job
from tests import stack


class Thumbnail(Payload):
    """What to shrink."""

    url: str
    width: int = Field(100, gt=0)


class Inner(BaseModel):
    size: int


class Outer(BaseModel):
    items: list[Inner]


def _job(**overrides: Any) -> Job:
    now = utcnow()
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "type": "system.echo",
        "queue": "system",
        "status": "failed",
        "payload": {"a": 1},
        "result": None,
        "error": {"type": "RuntimeError", "message": "boom"},
        "attempts": 2,
        "worker_losses": 0,
        "max_retries": 1,
        "progress": 0.5,
        "owner_id": uuid.uuid4(),
        "idempotency_key": "k",
        "cancel_requested": False,
        "created_at": now,
        "updated_at": now,
        "started_at": now,
        "finished_at": now,
        "next_attempt_at": None,
    }
    return Job(**{**values, **overrides})


# --- SubmitJob -------------------------------------------------------------------------------


def test_a_submission_needs_only_a_type() -> None:
    submission = SubmitJob.model_validate_json('{"type": "system.echo"}')
    assert submission.type == "system.echo"
    assert submission.payload == {}


@pytest.mark.parametrize(
    "body",
    [
        "{}",
        '{"type": ""}',
        '{"type": "%s"}' % ("x" * 201),
        '{"type": "system.echo", "extra": 1}',
        '{"type": "system.echo", "payload": [1]}',
    ],
)
def test_a_submission_of_the_wrong_shape_is_rejected(body: str) -> None:
    with pytest.raises(ValidationError):
        SubmitJob.model_validate_json(body)


def test_malformed_json_is_reported_as_json_invalid() -> None:
    with pytest.raises(ValidationError) as caught:
        SubmitJob.model_validate_json("{nope")
    assert caught.value.errors()[0]["type"] == "json_invalid"


# --- JobOut and JobTypeOut -------------------------------------------------------------------


def test_a_job_is_shown_with_its_url_and_error() -> None:
    row = _job()
    out = JobOut.of(row)
    assert out.id == row.id
    assert out.url == f"/v1/jobs/{row.id}"
    assert out.error is not None
    assert (out.error.type, out.error.message) == ("RuntimeError", "boom")
    body = json.loads(out.model_dump_json())
    assert body["status"] == "failed"
    assert body["idempotency_key"] == "k"
    assert body["created_at"].endswith("Z")
    assert "request_hash" not in body and "worker" not in body


def test_a_job_without_an_error_shows_null() -> None:
    assert JobOut.of(_job(error=None, status="succeeded", result=[1, 2])).error is None


def test_a_job_type_is_shown_with_its_limits_and_payload_schema() -> None:
    import conveyor.actors.all  # noqa: F401

    out = JobTypeOut.of(JOBS.get("system.sleep"))
    assert out.name == "system.sleep"
    assert out.queue == "system"
    assert out.max_retries == 0
    assert out.time_limit_seconds == dt.timedelta(hours=1, minutes=1).total_seconds()
    assert set(out.payload_schema["properties"]) == {"seconds", "steps"}


def test_a_job_type_without_a_time_limit_shows_null() -> None:
    registry = Registry()

    @job(queue="media", name="media.thumbnail", time_limit=None, registry=registry)
    def thumbnail(payload: Thumbnail) -> None:
        pass

    assert JobTypeOut.of(registry.get("media.thumbnail")).time_limit_seconds is None


# --- problems and field errors ---------------------------------------------------------------


def test_a_problem_defaults_to_about_blank_without_errors() -> None:
    body = Problem(title="Not found", status=404, detail="no such job")
    assert body.type == "about:blank"
    assert body.errors == []


def test_a_problem_response_is_problem_json_with_its_headers() -> None:
    response = problem(
        401,
        "Unauthorized",
        "no token",
        errors=[{"field": "Authorization", "message": "missing"}],
        headers={"WWW-Authenticate": "Bearer"},
    )
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.body is not None
    body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    assert body == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "no token",
        "errors": [{"field": "Authorization", "message": "missing"}],
    }


def test_a_problem_without_errors_leaves_the_member_out() -> None:
    body = json.loads(bytes(problem(404, "Not found", "gone").body))  # type: ignore[arg-type]
    assert "errors" not in body


def test_validation_errors_have_dotted_paths_under_a_prefix() -> None:
    with pytest.raises(ValidationError) as caught:
        Outer.model_validate({"items": [{"size": 1}, {"size": "big"}]})
    assert field_errors(caught.value, "payload") == [
        {"field": "payload.items.1.size", "message": caught.value.errors()[0]["msg"]}
    ]
    assert field_errors(caught.value)[0]["field"] == "items.1.size"


def test_a_validation_error_of_the_whole_body_is_named_body_or_the_prefix() -> None:
    with pytest.raises(ValidationError) as caught:
        Outer.model_validate_json("[]")
    assert field_errors(caught.value)[0]["field"] == "body"
    assert field_errors(caught.value, "payload")[0]["field"] == "payload"


# --- the OpenAPI builder ---------------------------------------------------------------------


def openapi_of(registry: Registry) -> dict[str, Any]:
    return json.loads(build_openapi(stack.test_settings(), registry, route_tables()))  # type: ignore[no-any-return]


def test_the_openapi_document_has_a_variant_per_job_type() -> None:
    registry = Registry()

    @job(queue="media", name="media.thumbnail", registry=registry)
    def thumbnail(payload: Thumbnail) -> None:
        """Shrink an image."""

    document = openapi_of(registry)
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    [variant] = body["schema"]["oneOf"]
    assert variant["title"] == "media.thumbnail"
    assert variant["description"] == "Shrink an image."
    assert variant["properties"]["type"] == {"const": "media.thumbnail"}
    ref = variant["properties"]["payload"]["$ref"]
    payload = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert payload["required"] == ["url"]
    assert payload["additionalProperties"] is False


def test_the_openapi_document_of_an_empty_registry_refers_to_submit_job() -> None:
    document = openapi_of(Registry())
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/SubmitJob"}
    assert "SubmitJob" in document["components"]["schemas"]


def test_every_operation_documents_the_problem_answers() -> None:
    document = openapi_of(Registry())
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path == "/v1/unsubscribe":  # public: the link's signed token is the proof
                assert operation["security"] == [], (path, method)
                assert "application/problem+json" in operation["responses"]["400"]["content"]
            elif path.startswith("/v1/auth/"):  # public: for those not signed in yet
                assert operation["security"] == [], (path, method)
                assert "application/problem+json" in operation["responses"]["422"]["content"]
            elif path.startswith("/v1/"):
                assert operation["security"] == [{"bearer": []}], (path, method)
                problem_401 = operation["responses"]["401"]["content"]
                assert "application/problem+json" in problem_401
