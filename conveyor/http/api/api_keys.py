"""Routes of a user's API keys: create (shown once), list, revoke."""

from __future__ import annotations

import datetime as dt
import uuid

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from conveyor.errors import InvalidRequestError, PermissionDeniedError
from conveyor.http.api.params import read_body, respond, routes, uuid_of
from conveyor.http.auth import client_of
from conveyor.http.keys import API_KEY_CACHE, CONTAINER, PRINCIPAL
from conveyor.http.routes import Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import ApiKey, Role
from conveyor.models.base import utcnow
from conveyor.services import api_keys

#: The longest life a key may be given in days (about ten years).
MAX_DAYS = 3650


class CreateApiKey(BaseModel):
    """A new key: its name, scopes, and optionally when it expires (at a time, or in days)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, examples=["nightly import"])
    scopes: list[str] = Field(min_length=1, max_length=20, examples=[["jobs:read", "jobs:write"]])
    expires_at: AwareDatetime | None = Field(None, description="When the key stops working")
    expires_in_days: int | None = Field(
        None, ge=1, le=MAX_DAYS, description="Or: how many days from now it stops working"
    )

    @field_validator("expires_at")
    @classmethod
    def _in_range(cls, value: dt.datetime | None) -> dt.datetime | None:
        """The time in UTC; an error for one that has none (0001-01-01T00:00:00+01:00)."""
        try:
            return None if value is None else value.astimezone(dt.UTC)
        except OverflowError:
            raise ValueError("out of range") from None

    def expiry(self) -> dt.datetime | None:
        """When the key expires (None: never); InvalidRequestError when given both ways."""
        if self.expires_at is not None and self.expires_in_days is not None:
            raise InvalidRequestError(
                "give expires_at or expires_in_days, not both",
                errors=[{"field": "expires_in_days", "message": "not with expires_at"}],
            )
        if self.expires_in_days is not None:
            return utcnow() + dt.timedelta(days=self.expires_in_days)
        return self.expires_at


class ApiKeyOut(BaseModel):
    """An API key as listed: never the key itself."""

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The key's visible start, to recognise it")
    scopes: list[str]
    created_at: dt.datetime
    last_used_at: dt.datetime | None = Field(description="To the minute")
    expires_at: dt.datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyOut:
        return cls(
            id=key.id,
            name=key.name,
            prefix=key.prefix,
            scopes=key.scopes,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            expires_at=key.expires_at,
        )


class CreatedApiKey(ApiKeyOut):
    key: str = Field(description="The key, shown only now: send it as `Bearer <key>`")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


KEY_ID = Parameter(
    "key_id", "path", {"type": "string", "format": "uuid"}, "The key's id", required=True
)


@routes.post(
    "/me/api-keys",
    role=Role.MEMBER,
    summary="Create an API key",
    body=CreateApiKey,
    answers={201: Answer("The key, shown once", CreatedApiKey, headers={"Location": "Its URL"})},
    errors={
        403: "Your role must use a second factor, and this session did not",
        409: "You hold as many keys as allowed",
        422: "An unknown scope, one your role cannot use, or a past expiry",
    },
)
async def create_api_key(request: web.Request) -> web.Response:
    """A new API key acting as you, narrowed to its scopes. It is shown once; only its hash
    is kept. A role that must use a second factor creates keys only from a session that
    used one."""
    principal = request[PRINCIPAL]
    if principal.role != principal.user.role:
        raise PermissionDeniedError(
            f"{principal.user.role}s create API keys only from a sign-in with a second factor"
        )
    body = await read_body(request, CreateApiKey)
    state = request.config_dict
    row, key = await run_db(
        state,
        api_keys.create,
        principal.user.id,
        api_keys.NewKey(body.name, body.scopes, body.expiry()),
        max_keys=state[CONTAINER].settings.api_keys_max_per_user,
        client=client_of(request),
    )
    created = CreatedApiKey(**ApiKeyOut.of(row).model_dump(), key=key)
    return respond(created, 201, {"Location": f"/v1/me/api-keys/{row.id}"})


@routes.get(
    "/me/api-keys",
    role=Role.MEMBER,
    summary="List your API keys",
    answers={200: Answer("Your keys that are not revoked, newest first", ApiKeyList)},
)
async def list_api_keys(request: web.Request) -> web.Response:
    """Your API keys that are not revoked (expired ones included), never the keys themselves."""
    rows = await run_db(request.config_dict, api_keys.list_keys, request[PRINCIPAL].user.id)
    return respond(ApiKeyList(items=[ApiKeyOut.of(row) for row in rows]))


@routes.route(
    "DELETE",
    "/me/api-keys/{key_id}",
    role=Role.MEMBER,
    summary="Revoke an API key",
    parameters=[KEY_ID],
    answers={204: Answer("Revoked: it stops working", content_type=None)},
    errors={404: "No such key of yours"},
)
async def revoke_api_key(request: web.Request) -> web.Response:
    """Revoke one of your API keys: refused from now on (within seconds on other web
    processes)."""
    key_id = uuid_of(request, "key_id", "API key")
    state = request.config_dict
    await run_db(
        state, api_keys.revoke, request[PRINCIPAL].user.id, key_id, client=client_of(request)
    )
    state[API_KEY_CACHE].drop_id(key_id)
    return web.Response(status=204)
