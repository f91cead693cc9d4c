"""OpenID Connect login through the API, against the local test provider: a first login
creates a verified account, later ones reuse its link, a verified address links an existing
account, and every way a login can go wrong is refused with its reason."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp import ClientResponse
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import BadRequestError
from conveyor.models import AuditEvent, Identity, OneTimeToken, User
from conveyor.models.base import utcnow
from conveyor.security.oidc import LoginState
from conveyor.services import oidc_login
from conveyor.services.users import create_user
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider, oidc_provider
from tests.stack import Stack
from tests.unit.http.test_errors import fields, problem

pytestmark = pytest.mark.integration

PUBLIC_URL = "https://jobs.example.com"
START = "/v1/auth/oidc/local/start"
CALLBACK = "/v1/auth/oidc/local/callback"


@pytest.fixture
async def provider() -> AsyncIterator[OidcProvider]:
    async with oidc_provider() as provider:
        yield provider


@pytest.fixture
def stack_settings(provider: OidcProvider) -> dict[str, Any]:
    local = {"issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    return {
        "oidc_providers": json.dumps({"local": local, "other": local}),
        "public_url": PUBLIC_URL,
        "outbound_allow_hosts": "127.0.0.1",
    }


async def authorize(stack: Stack, **query: str) -> dict[str, str]:
    """Start a login and let the provider approve it: the callback's query."""
    start = await stack.client.get(START, params=query, allow_redirects=False)
    assert start.status == 302, await start.text()
    async with aiohttp.ClientSession() as browser:
        approved = await browser.get(start.headers["Location"], allow_redirects=False)
    back = urlsplit(approved.headers["Location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == PUBLIC_URL + CALLBACK
    return dict(parse_qsl(back.query))


async def callback(stack: Stack, query: dict[str, str]) -> ClientResponse:
    return await stack.client.get(CALLBACK, params=query, allow_redirects=False)


async def log_in(stack: Stack) -> dict[str, Any]:
    response = await callback(stack, await authorize(stack))
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


def user_of(stack: Stack, email: str) -> User | None:
    with stack.db() as session:
        return session.scalars(select(User).where(User.email == email)).first()


def actions(stack: Stack) -> list[str]:
    with stack.db() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


async def test_the_configured_providers_are_listed(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get("/v1/auth/oidc/providers")
    assert response.status == 200
    assert await response.json() == {"providers": ["local", "other"]}


async def test_a_first_login_creates_a_verified_account_whose_tokens_work(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    tokens = await log_in(stack)
    assert tokens["token_type"] == "Bearer"
    assert tokens["refresh_token"].startswith("cvr_")
    user = user_of(stack, "ada@example.com")
    assert user is not None and user.email_verified_at is not None
    assert user.name == "Ada Lovelace" and user.password_hash is None
    jobs = await stack.client.get("/v1/jobs", headers=stack.headers(tokens["access_token"]))
    assert jobs.status == 200, await jobs.text()
    assert actions(stack) == ["registered", "oidc_linked", "login"]


async def test_a_second_login_reuses_the_linked_identity(embedded_stack: Stack) -> None:
    stack = embedded_stack
    first = await log_in(stack)
    second = await log_in(stack)
    assert second["session_id"] != first["session_id"]
    with stack.db() as session:
        identities = session.scalars(select(Identity)).all()
    assert [(i.provider, i.subject) for i in identities] == [("local", "user-1")]
    assert actions(stack).count("registered") == 1


async def test_a_verified_address_links_the_existing_account(embedded_stack: Stack) -> None:
    stack = embedded_stack
    existing = create_user(stack.db, "ada@example.com")
    with transaction(stack.db) as session:
        session.get_one(User, existing.id).email_verified_at = utcnow()
    tokens = await log_in(stack)
    with stack.db() as session:
        identity = session.scalars(select(Identity)).one()
    assert identity.user_id == existing.id
    assert "oidc_linked" in actions(stack) and "registered" not in actions(stack)
    me = await stack.client.get("/v1/jobs", headers=stack.headers(tokens["access_token"]))
    assert me.status == 200


async def test_an_address_the_provider_did_not_verify_links_nothing(
    embedded_stack: Stack, provider: OidcProvider
) -> None:
    stack = embedded_stack
    existing = create_user(stack.db, "ada@example.com")
    provider.user = {**provider.user, "email_verified": False}
    body = await problem(await callback(stack, await authorize(stack)), 401)
    assert "not verified" in body["detail"]
    with stack.db() as session:
        assert session.scalars(select(Identity)).all() == []
        assert session.get_one(User, existing.id).email_verified_at is None


async def test_an_account_that_never_verified_its_address_is_not_linked(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    create_user(stack.db, "ada@example.com")
    body = await problem(await callback(stack, await authorize(stack)), 409)
    assert "not verified" in body["detail"]


async def test_a_state_is_good_once(embedded_stack: Stack) -> None:
    stack = embedded_stack
    query = await authorize(stack)
    assert (await callback(stack, query)).status == 200
    body = await problem(await callback(stack, query), 400)
    assert fields(body) == ["state"] and "good once" in body["detail"]


async def test_an_unknown_state_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    query = {**await authorize(stack), "state": "made-up"}
    body = await problem(await callback(stack, query), 400)
    assert fields(body) == ["state"] and "unknown state" in body["detail"]


async def test_an_expired_state_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    query = await authorize(stack)
    with transaction(stack.db) as session:
        session.execute(update(OneTimeToken).values(expires_at=utcnow()))
    body = await problem(await callback(stack, query), 400)
    assert fields(body) == ["state"] and "expired" in body["detail"]


async def test_a_state_of_another_provider_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    query = await authorize(stack)
    response = await stack.client.get(
        "/v1/auth/oidc/other/callback", params=query, allow_redirects=False
    )
    body = await problem(response, 400)
    assert fields(body) == ["state"] and "another provider" in body["detail"]


async def test_a_wrong_nonce_is_refused(embedded_stack: Stack, provider: OidcProvider) -> None:
    stack = embedded_stack
    provider.fault = "wrong_nonce"
    body = await problem(await callback(stack, await authorize(stack)), 401)
    assert "nonce" in body["detail"]
    assert user_of(stack, "ada@example.com") is None


async def test_the_providers_error_is_reported(embedded_stack: Stack) -> None:
    query = {"error": "access_denied", "error_description": "the user said no", "state": "x"}
    body = await problem(await callback(embedded_stack, query), 400)
    assert fields(body) == ["error"]
    assert "access_denied: the user said no" in body["detail"]


async def test_a_callback_without_a_code_names_it(embedded_stack: Stack) -> None:
    body = await problem(await callback(embedded_stack, {"state": "x"}), 422)
    assert fields(body) == ["code"]


async def test_a_disabled_account_is_forbidden(embedded_stack: Stack) -> None:
    stack = embedded_stack
    await log_in(stack)
    with transaction(stack.db) as session:
        session.scalars(select(User).where(User.email == "ada@example.com")).one().active = False
    body = await problem(await callback(stack, await authorize(stack)), 403)
    assert "disabled" in body["detail"]


async def test_a_user_with_mfa_gets_the_second_step(embedded_stack: Stack) -> None:
    stack = embedded_stack
    await log_in(stack)
    with transaction(stack.db) as session:
        user = session.scalars(select(User).where(User.email == "ada@example.com")).one()
        user.totp_enabled_at = utcnow()
    body = await log_in(stack)
    assert body["mfa_required"] is True and body["mfa_token"].startswith("cvm_")
    assert body["methods"] == ["totp", "recovery_code"] and "access_token" not in body


async def test_return_to_gets_the_tokens_in_the_fragment(embedded_stack: Stack) -> None:
    stack = embedded_stack
    query = await authorize(stack, return_to=f"{PUBLIC_URL}/app/signed-in")
    response = await callback(stack, query)
    assert response.status == 303
    target, _, fragment = response.headers["Location"].partition("#")
    assert target == f"{PUBLIC_URL}/app/signed-in"
    tokens = dict(parse_qsl(fragment))
    jobs = await stack.client.get("/v1/jobs", headers=stack.headers(tokens["access_token"]))
    assert jobs.status == 200


@pytest.mark.parametrize(
    "return_to",
    [
        "https://evil.example.com/app",
        "https://jobs.example.com.evil.example.com/",
        "https://user@jobs.example.com/app",
        "http://jobs.example.com/app",
        "https://jobs.example.com/app#fragment",
        "/app",
    ],
)
async def test_return_to_elsewhere_is_refused(embedded_stack: Stack, return_to: str) -> None:
    response = await embedded_stack.client.get(
        START, params={"return_to": return_to}, allow_redirects=False
    )
    assert fields(await problem(response, 422)) == ["return_to"]


async def test_an_unknown_provider_is_not_found(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get("/v1/auth/oidc/nope/start", allow_redirects=False)
    await problem(response, 404)


async def test_closed_registration_creates_no_account(embedded_stack: Stack) -> None:
    stack = embedded_stack
    stack.container.settings = stack.settings.model_copy(update={"registration": "closed"})
    body = await problem(await callback(stack, await authorize(stack)), 403)
    assert "registration is closed" in body["detail"]
    assert user_of(stack, "ada@example.com") is None


def test_of_racing_callbacks_with_one_state_one_wins(pg_db: sessionmaker[Session]) -> None:
    login = LoginState("local", "the-state", "the-nonce", "the-verifier", PUBLIC_URL + CALLBACK)
    oidc_login.save(pg_db, login, return_to=None)
    start = threading.Barrier(8)

    def race() -> str:
        start.wait(timeout=10)
        try:
            return oidc_login.claim(pg_db, "local", "the-state").nonce
        except BadRequestError as exc:
            return exc.detail

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: race(), range(8)))
    assert outcomes.count("the-nonce") == 1
    assert all("good once" in o for o in outcomes if o != "the-nonce")
