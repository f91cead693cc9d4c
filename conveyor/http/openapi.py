"""The OpenAPI 3.1 document, generated from the route tables, models, job types and settings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from conveyor import __version__
from conveyor.http.routes import (
    PROBLEM_JSON,
    UNKNOWN_QUERY,
    Answer,
    Parameter,
    Route,
    RouteTable,
    openapi_path,
)
from conveyor.http.schemas import Problem
from conveyor.models import Role
from conveyor.registry import Registry
from conveyor.settings import Settings

REF = "#/components/schemas/{model}"

#: Every operation can answer these, whatever it does: the error middleware of each app
#: turns an unexpected error into 500 and an unreachable database into 503.
SERVER_ERRORS = {
    500: "An unexpected error; it was logged",
    503: "Service unavailable (the database cannot be reached); retry after Retry-After seconds",
}
ERROR_HEADERS = {
    401: {
        "WWW-Authenticate": 'The scheme to use: Bearer realm="conveyor", with '
        'error="invalid_token" when the token sent was refused'
    },
    429: {"Retry-After": "Seconds to wait before retrying"},
    503: {"Retry-After": "Seconds to wait before retrying"},
}


class Components:
    """The named schemas of one document; each model goes in once, its `$defs` beside it."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def model(self, model: type[BaseModel], name: str | None = None) -> dict[str, str]:
        """A `$ref` to the model's schema, added under `name` (the model's by default)."""
        name = name or model.__name__
        if name not in self.schemas:
            schema = model.model_json_schema(ref_template=REF)
            self.schemas.update(schema.pop("$defs", {}))
            self.schemas[name] = schema
        return {"$ref": REF.format(model=name)}


@dataclass(frozen=True)
class Context:
    """What a schema hook may draw on while the document is built."""

    settings: Settings
    registry: Registry
    components: Components


def build_openapi(
    settings: Settings, registry: Registry, tables: Mapping[str, RouteTable]
) -> bytes:
    """The document of every route in `tables` (mount prefix -> the route table there)."""
    context = Context(settings, registry, Components())
    paths: dict[str, dict[str, Any]] = {}
    names: set[str] = set()
    for prefix, table in tables.items():
        for route in table:
            if route.name in names:
                raise ValueError(f"two routes are named {route.name!r}: operation ids must differ")
            names.add(route.name)
            operations = paths.setdefault(openapi_path(prefix + route.path), {})
            operations[route.method.lower()] = _operation(route, table, context)
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Conveyor",
            "version": __version__,
            "description": "Submit jobs, follow their status, fetch results.",
        },
        "tags": [{"name": table.tag} for table in tables.values()],
        "paths": paths,
        "components": {
            "schemas": context.components.schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
    return json.dumps(document).encode()


def _operation(route: Route, table: RouteTable, context: Context) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": [table.tag],
        "security": [] if route.public else [{"bearer": []}],
    }
    if route.description and route.description != route.summary:
        operation["description"] = route.description
    if not route.public and route.role is not None:
        operation["x-conveyor-role"] = route.role.value
        operation["x-conveyor-scope"] = route.scope
        who = _who_may(route)
        described = operation.get("description")
        operation["description"] = f"{described}\n\n{who}" if described else who
    if route.parameters:
        operation["parameters"] = [_parameter(p, context.settings) for p in route.parameters]
    if route.body is not None:
        if isinstance(route.body, type):
            schema: Mapping[str, Any] = context.components.model(route.body)
        else:
            schema = route.body(context)
        settings = context.settings
        operation["requestBody"] = {
            "required": route.body_required,
            "description": f"At most {settings.max_body_bytes} bytes (larger: 413), sent within "
            f"{settings.http_body_timeout_seconds:g} seconds of the headers (later: 408).",
            "content": {"application/json": {"schema": schema}},
        }
    responses = {str(status): _answer(a, context) for status, a in sorted(route.answers.items())}
    errors = {**({} if route.public else table.auth_errors), **route.errors, **SERVER_ERRORS}
    if table.known_query_only:
        known = errors.get(422)
        errors[422] = f"{known}; or {UNKNOWN_QUERY}" if known else UNKNOWN_QUERY.capitalize()
    if route.body is not None:  # the server's limit on receiving it (conveyor/http/server.py)
        errors.setdefault(408, "The body did not arrive in time; the connection is closed")
    if 413 in errors:  # the real limit, which the settings decide
        errors[413] = f"{errors[413]} ({context.settings.max_body_bytes} bytes)"
    for status, description in sorted(errors.items()):
        responses.setdefault(str(status), _error(status, description, table.error_type, context))
    operation["responses"] = responses
    return operation


def _who_may(route: Route) -> str:
    """A route's access rule in words, for its description."""
    roles = {
        Role.MEMBER: "Any signed-in user",
        Role.OPERATOR: "Operators and admins",
        Role.ADMIN: "Admins",
    }[route.role or Role.ADMIN]
    keys = (
        f"API keys need the `{route.scope}` scope."
        if route.scope
        else "API keys may not call it (sign in as the user)."
    )
    return f"Access: {roles}. {keys}"


def _parameter(parameter: Parameter, settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": parameter.name,
        "in": parameter.where,
        "required": parameter.required or parameter.where == "path",
        "schema": parameter.schema_for(settings),
    }
    description = parameter.description_for(settings)
    if description:
        out["description"] = description
    if parameter.comma_separated:
        out["style"], out["explode"] = "form", False
    return out


def _answer(answer: Answer, context: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    if answer.content_type is not None:
        if answer.model is not None:
            schema: Mapping[str, Any] = context.components.model(answer.model)
        else:
            schema = answer.schema if answer.schema is not None else {}
        out["content"] = {answer.content_type: {"schema": schema}}
    if answer.headers:
        out["headers"] = _headers(answer.headers)
    return out


def _error(status: int, description: str, media_type: str, context: Context) -> dict[str, Any]:
    schema = context.components.model(Problem) if media_type == PROBLEM_JSON else {"type": "string"}
    out: dict[str, Any] = {"description": description, "content": {media_type: {"schema": schema}}}
    if status in ERROR_HEADERS:
        out["headers"] = _headers(ERROR_HEADERS[status])
    return out


def _headers(headers: Mapping[str, str]) -> dict[str, Any]:
    return {
        name: {"description": description, "schema": {"type": "string"}}
        for name, description in headers.items()
    }
