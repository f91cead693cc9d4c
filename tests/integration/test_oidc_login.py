"""OpenID Connect login through the API, against the local test provider: a first login
creates a verified account, later ones reuse its link, a verified address links an existing
account (and tells its owner), a login finishes only in the browser that started it, a
`return_to` gets a one-time login code, and every way a login can go wrong is refused with its
reason."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp import ClientResponse
from pydantic import HttpUrl
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import AuthenticationError, BadRequestError
from conveyor.http.keys import THROTTLES
from conveyor.models import AuditEvent, Identity, Job, OneTimeToken, Role, TokenPurpose, User
from conveyor.models.base import utcnow
from conveyor.security.oidc import LoginState, parse_providers
from conveyor.security.throttle import MemoryStore, Rule, Throttle
from conveyor.services import oidc_login
from conveyor.services.audit import Client
from conveyor.services.auth import TokenConfig
from conveyor.services.sessions import Lifetimes, hash_secret
from conveyor.services.users import create_user
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider, oidc_provider
from tests.stack import Stack
from tests.unit.http.test_errors import fields, problem

pytestmark = pytest.mark.integration

PUBLIC_URL = "https://jobs.example.com"
START = "/v1/auth/oidc/local/start"
CALLBACK = "/v1/auth/oidc/local/callback"
EXCHANGE = "/v1/auth/oidc/exchange"
#: The cookie binding a login to its browser (CONVEYOR_PUBLIC_URL is https here).
COOKIE = "__Host-conveyor-oidc"


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


@dataclass(frozen=True)
class Approved:
    """A login the provider approved: the callback's query, and the browser's cookie."""

    query: dict[str, str]
    cookie: str | None

    def but(self, **changes: Any) -> Approved:
        return dataclasses.replace(self, **changes)


async def authorize(stack: Stack, **query: str) -> Approved:
    """Start a login and let the provider approve it."""
    start = await stack.client.get(START, params=query, allow_redirects=False)
    assert start.status == 302, await start.text()
    async with aiohttp.ClientSession() as browser:
        approved = await browser.get(start.headers["Location"], allow_redirects=False)
    back = urlsplit(approved.headers["Location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == PUBLIC_URL + CALLBACK
    return Approved(dict(parse_qsl(back.query)), start.cookies[COOKIE].value)


async def callback(stack: Stack, approved: Approved) -> ClientResponse:
    # The test client keeps no Secure cookie over plain http: the browser's is sent by hand.
    cookies = {COOKIE: approved.cookie} if approved.cookie is not None else None
    return await stack.client.get(
        CALLBACK, params=approved.query, cookies=cookies, allow_redirects=False
    )


async def exchange(stack: Stack, login_code: str) -> ClientResponse:
    return await stack.client.post(EXCHANGE, json={"login_code": login_code})


def notices(stack: Stack) -> list[tuple[str, str | None]]:
    """The kinds of the security notices queued, and their `method`."""
    with stack.db() as session:
        jobs = session.scalars(select(Job).where(Job.type == "auth.send_notice").order_by(Job.id))
        return [(j.payload["kind"], j.payload["context"].get("method")) for j in jobs]


async def log_in(stack: Stack) -> dict[str, Any]:
    response = await callback(stack, await authorize(stack))
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


def user_of(stack: Stack, email: str) -> User | None:
    with stack.db() as session:
        return session.scalars(select(User).where(User.email == email)).first()


def unverified_user(stack: Stack, email: str) -> User:
    """An account whose owner never proved the address (a self-registered one)."""
    user = create_user(stack.db, email)
    with transaction(stack.db) as session:
        session.get_one(User, user.id).email_verified_at = None
    return user


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
    existing = unverified_user(stack, "ada@example.com")
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
    unverified_user(stack, "ada@example.com")
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
    approved = await authorize(stack)
    made_up = approved.but(query={**approved.query, "state": "made-up"})
    body = await problem(await callback(stack, made_up), 400)
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
    approved = await authorize(stack)
    response = await stack.client.get(
        "/v1/auth/oidc/other/callback",
        params=approved.query,
        cookies={COOKIE: approved.cookie or ""},
        allow_redirects=False,
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
    body = await problem(await callback(embedded_stack, Approved(query, None)), 400)
    assert fields(body) == ["error"]
    assert "access_denied: the user said no" in body["detail"]


async def test_a_callback_without_a_code_names_it(embedded_stack: Stack) -> None:
    body = await problem(await callback(embedded_stack, Approved({"state": "x"}, None)), 422)
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


async def login_code_of(response: ClientResponse, return_to: str) -> str:
    assert response.status == 303, await response.text()
    target, _, fragment = response.headers["Location"].partition("#")
    assert target == return_to
    sent = dict(parse_qsl(fragment))
    assert list(sent) == ["login_code"] and sent["login_code"].startswith("cvo_")
    return sent["login_code"]


async def test_return_to_gets_a_login_code_that_trades_for_tokens_once(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    return_to = f"{PUBLIC_URL}/app/signed-in"
    response = await callback(stack, await authorize(stack, return_to=return_to))
    code = await login_code_of(response, return_to)
    traded = await exchange(stack, code)
    tokens = await traded.json()
    assert traded.status == 200, tokens
    assert tokens["refresh_token"].startswith("cvr_")
    jobs = await stack.client.get("/v1/jobs", headers=stack.headers(tokens["access_token"]))
    assert jobs.status == 200
    again = await problem(await exchange(stack, code), 401)
    assert fields(again) == ["login_code"] and "used" in again["detail"]
    with stack.db() as session:
        row = session.scalars(
            select(OneTimeToken).where(OneTimeToken.purpose == TokenPurpose.OIDC_CODE.value)
        ).one()
    assert row.token_hash == hash_secret(code) and "cvr_" not in json.dumps(row.data)
    assert row.expires_at - row.created_at == dt.timedelta(seconds=60)


async def test_an_expired_or_unknown_login_code_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    return_to = f"{PUBLIC_URL}/app"
    code = await login_code_of(
        await callback(stack, await authorize(stack, return_to=return_to)), return_to
    )
    with transaction(stack.db) as session:
        session.execute(update(OneTimeToken).values(expires_at=utcnow()))
    assert fields(await problem(await exchange(stack, code), 401)) == ["login_code"]
    assert fields(await problem(await exchange(stack, "cvo_made-up"), 401)) == ["login_code"]
    empty = await stack.client.post(EXCHANGE, json={})
    assert fields(await problem(empty, 422)) == ["login_code"]


async def test_a_login_code_of_a_user_with_mfa_trades_for_the_second_step(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    await log_in(stack)
    with transaction(stack.db) as session:
        user = session.scalars(select(User).where(User.email == "ada@example.com")).one()
        user.totp_enabled_at = utcnow()
    return_to = f"{PUBLIC_URL}/app"
    response = await callback(stack, await authorize(stack, return_to=return_to))
    traded = await exchange(stack, await login_code_of(response, return_to))
    body = await traded.json()
    assert traded.status == 200, body
    assert body["mfa_required"] is True and body["mfa_token"].startswith("cvm_")


@pytest.mark.parametrize(
    "return_to",
    [
        "https://evil.example.com/app",
        "https://jobs.example.com.evil.example.com/",
        "https://user@jobs.example.com/app",
        "http://jobs.example.com/app",
        "https://jobs.example.com/app#fragment",
        "/app",
        "https://[abc",
        "https://jobs.example.com/v1",
        "https://jobs.example.com/v1/auth/oidc/local/start",
        "https://jobs.example.com/admin/",
        "https://jobs.example.com/V1/jobs",
        "https://jobs.example.com/app/../v1/jobs",
        "https://jobs.example.com/%76%31/jobs",
        "https://jobs.example.com//v1/jobs",
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
    throttle = Throttle(MemoryStore(), Rule.parse("10/1m"))
    client = Client(ip="192.0.2.7", user_agent=None)
    oidc_login.save(pg_db, throttle, login, return_to=None, binding="b", client=client)
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


def test_of_racing_trades_of_one_login_code_one_wins(stack: Stack) -> None:
    user = create_user(stack.db, "ada@example.com")
    with transaction(stack.db) as session:
        session.get_one(User, user.id).last_login_at = utcnow()  # a sign-in is notified
    code = "cvo_the-code"
    with transaction(stack.db) as session:
        session.add(
            OneTimeToken(
                purpose=TokenPurpose.OIDC_CODE.value,
                user_id=user.id,
                token_hash=hash_secret(code),
                expires_at=utcnow() + oidc_login.CODE_TTL,
                data={"amr": ["oidc:local"]},
            )
        )
    start = threading.Barrier(8)

    def race() -> bool:
        start.wait(timeout=10)
        try:
            oidc_login.exchange(
                stack.db,
                stack.container.submissions,
                TokenConfig.of(stack.settings),
                Lifetimes.of(stack.settings),
                code,
                client=Client(ip="192.0.2.7"),
            )
        except AuthenticationError:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: race(), range(8)))
    assert outcomes.count(True) == 1
    assert actions(stack).count("login") == 1
    assert notices(stack) == [("new_sign_in", "local (OpenID Connect)")]


async def test_start_binds_the_login_to_the_browser_with_a_host_cookie(
    embedded_stack: Stack,
) -> None:
    start = await embedded_stack.client.get(START, allow_redirects=False)
    assert start.status == 302
    cookie = start.cookies[COOKIE]
    assert len(cookie.value) >= 40
    assert cookie["path"] == "/" and cookie["secure"] and cookie["httponly"]
    assert cookie["samesite"] == "Lax" and cookie["max-age"] == "600"
    with embedded_stack.db() as session:
        row = session.scalars(select(OneTimeToken)).one()
    assert row.data["binding"] == hash_secret(cookie.value)


async def test_over_plain_http_the_cookie_has_no_host_prefix(embedded_stack: Stack) -> None:
    stack = embedded_stack
    public_url = HttpUrl("http://localhost:8080")
    stack.container.settings = stack.settings.model_copy(update={"public_url": public_url})
    start = await stack.client.get(START, allow_redirects=False)
    assert start.status == 302
    assert COOKIE not in start.cookies
    cookie = start.cookies["conveyor-oidc"]
    assert not cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax"


async def test_a_callback_in_another_browser_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    approved = await authorize(stack)
    for cookie in (None, "another-browsers-cookie"):
        body = await problem(await callback(stack, approved.but(cookie=cookie)), 400)
        assert fields(body) == ["state"] and "browser" in body["detail"]
    assert user_of(stack, "ada@example.com") is None
    response = await callback(stack, approved)  # the login is still the starter's to finish
    assert response.status == 200


async def test_a_finished_login_clears_its_cookie(embedded_stack: Stack) -> None:
    stack = embedded_stack
    for query in ({}, {"return_to": f"{PUBLIC_URL}/app"}):
        response = await callback(stack, await authorize(stack, **query))
        assert response.status in (200, 303)
        cleared = response.cookies[COOKIE]
        assert cleared.value == "" and cleared["max-age"] == "0" and cleared["secure"]


async def test_sign_ins_to_an_account_used_before_are_notified(embedded_stack: Stack) -> None:
    stack = embedded_stack
    await log_in(stack)
    assert notices(stack) == []  # the account was made by this first login
    await log_in(stack)
    return_to = f"{PUBLIC_URL}/app"
    response = await callback(stack, await authorize(stack, return_to=return_to))
    code = await login_code_of(response, return_to)
    assert len(notices(stack)) == 1  # the session, so its notice, comes with the trade
    assert (await exchange(stack, code)).status == 200
    assert notices(stack) == [("new_sign_in", "local (OpenID Connect)")] * 2


async def test_linking_an_existing_account_tells_its_owner(embedded_stack: Stack) -> None:
    stack = embedded_stack
    admin = create_user(stack.db, "ada@example.com", Role.ADMIN)
    with transaction(stack.db) as session:
        row = session.get_one(User, admin.id)
        row.email_verified_at = row.last_login_at = utcnow()
    await log_in(stack)
    assert notices(stack) == [
        ("identity_linked", "local (OpenID Connect)"),
        ("new_sign_in", "local (OpenID Connect)"),
    ]
    await log_in(stack)
    assert [kind for kind, _ in notices(stack)].count("identity_linked") == 1


async def test_a_provider_that_does_not_link_existing_accounts_refuses_them(
    embedded_stack: Stack, provider: OidcProvider
) -> None:
    stack = embedded_stack
    local = {
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "link_existing": False,
    }
    providers = parse_providers(json.dumps({"local": local}))
    stack.container.settings = stack.settings.model_copy(update={"oidc_providers": providers})
    existing = create_user(stack.db, "ada@example.com")
    with transaction(stack.db) as session:
        session.get_one(User, existing.id).email_verified_at = utcnow()
    body = await problem(await callback(stack, await authorize(stack)), 409)
    assert "not linked" in body["detail"]
    with stack.db() as session:
        assert session.scalars(select(Identity)).all() == []
    assert notices(stack) == []


async def test_starts_count_against_the_client_addresss_sign_in_attempts(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    throttle = stack.client.app[THROTTLES].login_ip
    for _ in range(throttle.rule.limit - 1):
        throttle.hit("login:ip:127.0.0.1")
    assert (await stack.client.get(START, allow_redirects=False)).status == 302
    refused = await stack.client.get(START, allow_redirects=False)
    await problem(refused, 429)
    assert int(refused.headers["Retry-After"]) > 0
    with stack.db() as session:
        assert len(session.scalars(select(OneTimeToken)).all()) == 1
