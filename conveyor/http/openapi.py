"""The OpenAPI 3.1 document, built from the same pydantic models and job-type registry."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from conveyor import __version__
from conveyor.http.schemas import JobOut, JobPage, JobTypeList, Problem, SubmitJob
from conveyor.registry import Registry

REF = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _json(ref: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def build_openapi(registry: Registry) -> bytes:
    schemas: dict[str, Any] = {}
    job = _schema(JobOut, schemas)
    page = _schema(JobPage, schemas)
    types = _schema(JobTypeList, schemas)
    problem = _schema(Problem, schemas)
    _schema(SubmitJob, schemas)
    variants = []
    for job_type in registry:
        payload_name = f"Payload_{job_type.name.replace('.', '_')}"
        payload = job_type.payload.model_json_schema(ref_template=REF)
        schemas.update(payload.pop("$defs", {}))
        schemas[payload_name] = payload
        variants.append(
            {
                "type": "object",
                "title": job_type.name,
                "description": job_type.description,
                "required": ["type"],
                "additionalProperties": False,
                "properties": {
                    "type": {"const": job_type.name},
                    "payload": {"$ref": REF.format(model=payload_name)},
                },
            }
        )
    submit = {"oneOf": variants} if variants else {"$ref": REF.format(model="SubmitJob")}
    errors = {
        str(code): {
            "description": text,
            "content": {"application/problem+json": {"schema": problem}},
        }
        for code, text in [
            (400, "Malformed request"),
            (401, "Missing or invalid token"),
            (404, "Not found"),
            (409, "Conflict"),
            (413, "Body too large"),
            (422, "Invalid fields"),
        ]
    }
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }

    def op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {**responses, **errors},
            **extra,
        }

    def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": description,
        }

    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Conveyor",
            "version": __version__,
            "description": "Submit jobs, follow their status, fetch results.",
        },
        "paths": {
            "/v1/jobs": {
                "post": op(
                    "Submit a job",
                    {
                        "202": _json(job, "Queued; poll the Location"),
                        "200": _json(job, "Finished within Prefer: wait"),
                    },
                    requestBody={
                        "required": True,
                        "content": {"application/json": {"schema": submit}},
                    },
                    parameters=[
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                        },
                        {
                            "name": "Prefer",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "examples": ["wait=10"]},
                        },
                    ],
                ),
                "get": op(
                    "List jobs, newest first",
                    {"200": _json(page, "A page of jobs")},
                    parameters=[
                        query("status", {"type": "string"}, "Comma-separated statuses"),
                        query("type", {"type": "string"}, "Comma-separated job types"),
                        query("limit", {"type": "integer", "minimum": 1}, "Page size"),
                        query("cursor", {"type": "string"}, "next_cursor of the last page"),
                    ],
                ),
            },
            "/v1/jobs/{job_id}": {
                "get": op(
                    "Read a job (optionally waiting for a change)",
                    {"200": _json(job, "The job")},
                    parameters=[
                        job_id,
                        query("wait", {"type": "number", "minimum": 0}, "Seconds to wait"),
                        query("until", {"enum": ["change", "finished"]}, "What to wait for"),
                    ],
                ),
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": op(
                    "Cancel a job",
                    {"200": _json(job, "Cancelled"), "202": _json(job, "Running; asked to stop")},
                    parameters=[job_id],
                ),
            },
            "/v1/jobs/{job_id}/events": {
                "get": op(
                    "Stream the job's events (server-sent events)",
                    {"200": {"description": "text/event-stream of status and progress"}},
                    parameters=[job_id],
                ),
            },
            "/v1/job-types": {"get": op("List job types", {"200": _json(types, "Job types")})},
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness (database, broker, Redis)",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
    return json.dumps(document).encode()
