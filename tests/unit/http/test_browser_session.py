"""Signing in from a browser: the sign-in form, the session cookie (its attributes, tampering,
expiry, sign-out), CSRF and origin checks, where a sign-in goes next, and bearer tokens still
taken by the pages."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from typing import Any

import pytest
from aiohttp import ClientResponse
from sqlalchemy import select, update
from yarl import URL

from conveyor.db import transaction
from conveyor.http.browser_session import landing
from conveyor.http.home.signin import LOGIN_CSRF_COOKIE, MFA_COOKIE
from conveyor.http.keys import BROWSER_SESSIONS, SESSION_CACHE, SESSION_COOKIES, USER_CACHE
from conveyor.http.session_cookie import COOKIE, SECURE_COOKIE, SessionCookies
from conveyor.http.user_cache import BrowserSessionCache
from conveyor.models import AuditEvent, AuthSession, Role, User
from conveyor.models.base import utcnow
from conveyor.security import totp
from conveyor.services import sign_in_links
from conveyor.services.accounts import set_password
from tests.stack import Stack
from tests.stack import test_settings as settings_of

PASSWORD = "correct horse battery staple"
MEMBER = "member@example.com"
ADMIN = "admin@example.com"


@pytest.fixture
def stack_settings() -> dict[str, Any]:
    # The admin here signs in with a password alone; the rule that admins need MFA has its
    # own test, with its own settings.
    return {"mfa_required_roles": ""}


def _with_password(stack: Stack, email: str) -> None:
    set_password(stack.db, email, PASSWORD)
    with stack.db() as session:
        user = session.scalars(select(User).where(User.email == email)).one()
    stack.client.app[USER_CACHE].drop(user.id)


def _cookies(response: ClientResponse) -> dict[str, str]:
    """The raw Set-Cookie headers of a response, by cookie name."""
    return {header.split("=", 1)[0]: header for header in response.headers.getall("Set-Cookie", [])}


async def _login_form(stack: Stack, path: str = "/app/login") -> str:
    """The sign-in form's double-submit token (the browser's cookie jar keeps its cookie)."""
    response = await stack.client.get(path)
    text = await response.text()
    assert response.status == 200, text
    found = re.search(r'name="csrf_token" value="([^"]+)"', text)
    assert found is not None, text
    return found.group(1)


async def _sign_in(
    stack: Stack, email: str = MEMBER, password: str = PASSWORD, **form: str
) -> ClientResponse:
    token = await _login_form(stack)
    return await stack.client.post(
        "/app/login",
        data={"csrf_token": token, "email": email, "password": password, **form},
        allow_redirects=False,
    )


async def _signed_in(stack: Stack, email: str = MEMBER) -> str:
    """Sign `email` in through the form; the session cookie's value (the jar has it too)."""
    _with_password(stack, email)
    response = await _sign_in(stack, email)
    assert response.status == 303, await response.text()
    return response.cookies[COOKIE].value


def _session_id(stack: Stack, cookie: str) -> uuid.UUID:
    found = stack.client.app[SESSION_COOKIES].read(cookie)
    assert found is not None
    return found


async def _page_csrf(stack: Stack, path: str = "/app/") -> str:
    response = await stack.client.get(path, allow_redirects=False)
    text = await response.text()
    assert response.status == 200, text
    found = re.search(r'name="csrf_token" value="([^"]+)"', text)
    assert found is not None, text
    return found.group(1)


def _actions(stack: Stack, action: str) -> list[AuditEvent]:
    with stack.db() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def _forget(stack: Stack, session_id: uuid.UUID) -> None:
    """This process re-reads the session (another process changed it)."""
    stack.client.app[SESSION_CACHE].drop(session_id)
    stack.client.app[BROWSER_SESSIONS].drop(session_id)


async def test_the_login_form_sets_its_double_submit_cookie(embedded_stack: Stack) -> None:
    response = await embedded_stack.client.get("/app/login?next=/admin/jobs")
    text = await response.text()
    assert response.status == 200
    assert 'name="next" value="/admin/jobs"' in text
    assert 'autocomplete="current-password"' in text
    cookie = _cookies(response)[LOGIN_CSRF_COOKIE]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/app/login" in cookie
    assert "Secure" not in cookie


async def test_signing_in_sets_the_session_cookie_and_opens_a_session(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    _with_password(stack, MEMBER)
    response = await _sign_in(stack)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/app/"
    cookie = _cookies(response)[COOKIE]
    for attribute in ("HttpOnly", "Path=/", "SameSite=Strict"):
        assert attribute in cookie
    assert f"Max-Age={stack.settings.session_max_age_seconds}" in cookie
    assert "Secure" not in cookie
    session_id = _session_id(stack, response.cookies[COOKIE].value)
    with stack.db() as session:
        row = session.get(AuthSession, session_id)
    assert row is not None and row.amr == ["pwd"] and row.revoked_at is None
    assert [e.details["amr"] for e in _actions(stack, "login")] == [["pwd"]]

    page = await stack.client.get("/app/", allow_redirects=False)
    text = await page.text()
    assert page.status == 200, text
    assert MEMBER in text and 'action="/app/logout"' in text
    assert f'value="{stack.client.app[SESSION_COOKIES].csrf(session_id)}"' in text


async def test_an_operator_lands_on_the_dashboard_or_the_page_asked_for(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    _with_password(stack, ADMIN)
    response = await _sign_in(stack, ADMIN)
    assert response.headers["Location"] == "/admin/"
    stack.client.session.cookie_jar.clear()
    response = await _sign_in(stack, ADMIN, next="/admin/jobs?status=failed")
    assert response.headers["Location"] == "/admin/jobs?status=failed"
    page = await stack.client.get("/admin/", allow_redirects=False)
    assert page.status == 200


@pytest.mark.parametrize(
    ("asked", "member", "operator"),
    [
        ("", "/app/", "/admin/"),
        ("/app/jobs/new", "/app/jobs/new", "/app/jobs/new"),
        ("/admin/queues?x=1", "/admin/queues?x=1", "/admin/queues?x=1"),
        ("/admin", "/admin", "/admin"),
        ("//evil.example/admin/", "/app/", "/admin/"),
        ("https://evil.example/app/", "/app/", "/admin/"),
        ("/\\evil.example", "/app/", "/admin/"),
        ("/app\\@evil.example", "/app/", "/admin/"),
        ("/v1/jobs", "/app/", "/admin/"),
        ("/application", "/app/", "/admin/"),
        ("/app/login?next=//evil", "/app/", "/admin/"),
        ("/app/logout", "/app/", "/admin/"),
        ("/app/\r\nSet-Cookie:x", "/app/", "/admin/"),
        ("javascript:alert(1)", "/app/", "/admin/"),
    ],
)
def test_a_sign_in_goes_on_only_to_a_page_of_ours(asked: str, member: str, operator: str) -> None:
    assert landing(asked, Role.MEMBER) == member
    assert landing(asked, Role.OPERATOR) == operator


async def test_an_off_site_next_is_not_followed(embedded_stack: Stack) -> None:
    stack = embedded_stack
    _with_password(stack, MEMBER)
    response = await _sign_in(stack, next="https://evil.example/")
    assert response.headers["Location"] == "/app/"


async def test_a_wrong_password_shows_the_form_again(embedded_stack: Stack) -> None:
    stack = embedded_stack
    _with_password(stack, MEMBER)
    response = await _sign_in(stack, password="wrong password")
    text = await response.text()
    assert response.status == 401
    assert "Wrong email or password." in text and f'value="{MEMBER}"' in text
    assert COOKIE not in response.cookies
    assert [e.details["reason"] for e in _actions(stack, "login_failed")] == ["wrong_password"]
    missing = await _sign_in(stack, password="")
    assert missing.status == 422


async def test_an_unverified_address_is_told_to_verify(embedded_stack: Stack) -> None:
    stack = embedded_stack
    _with_password(stack, MEMBER)
    with transaction(stack.db) as session:
        session.execute(update(User).where(User.email == MEMBER).values(email_verified_at=None))
    stack.client.app[USER_CACHE]._entries.clear()
    response = await _sign_in(stack)
    assert response.status == 403
    assert "Verify your email address first" in await response.text()


async def test_the_login_form_needs_its_double_submit_token(embedded_stack: Stack) -> None:
    stack = embedded_stack
    _with_password(stack, MEMBER)
    form = {"email": MEMBER, "password": PASSWORD}
    # No cookie at all (a form posted from elsewhere).
    response = await stack.client.post("/app/login", data=form, allow_redirects=False)
    assert response.status == 403
    # The cookie, but not its value in the form.
    await _login_form(stack)
    response = await stack.client.post(
        "/app/login", data={**form, "csrf_token": "x" * 43}, allow_redirects=False
    )
    assert response.status == 403
    assert _actions(stack, "login") == []


async def test_a_cross_site_login_post_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    _with_password(stack, MEMBER)
    token = await _login_form(stack)
    form = {"csrf_token": token, "email": MEMBER, "password": PASSWORD}
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        response = await stack.client.post(
            "/app/login", data=form, headers=headers, allow_redirects=False
        )
        assert response.status == 403, headers
    assert _actions(stack, "login") == []


async def test_without_a_session_a_page_goes_to_the_sign_in_form(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.get("/admin/jobs?status=failed", allow_redirects=False)
    assert response.status == 303
    location = URL(response.headers["Location"])
    assert (location.path, location.query["next"]) == ("/app/login", "/admin/jobs?status=failed")
    response = await stack.client.get("/app/", allow_redirects=False)
    assert URL(response.headers["Location"]).query["next"] == "/app/"
    posted = await stack.client.post("/app/logout", allow_redirects=False)
    assert posted.status == 401
    assert "text/html" in posted.headers["Content-Type"]


async def test_a_tampered_cookie_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    cookie = await _signed_in(stack)
    session_id = _session_id(stack, cookie)
    stack.client.session.cookie_jar.clear()
    other = SessionCookies(b"another deployment's key").value(session_id)
    forged_id = uuid.UUID(int=session_id.int ^ 1).hex + cookie[32:]
    changed = cookie[:-1] + ("B" if cookie.endswith("A") else "A")
    for value in (other, forged_id, changed, session_id.hex, "", "x" * 500):
        response = await stack.client.get(
            "/app/", headers={"Cookie": f"{COOKIE}={value}"}, allow_redirects=False
        )
        assert response.status == 303, value
    response = await stack.client.get(
        "/app/", headers={"Cookie": f"{COOKIE}={cookie}"}, allow_redirects=False
    )
    assert response.status == 200


async def test_an_ended_or_expired_session_s_cookie_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    cookie = await _signed_in(stack)
    session_id = _session_id(stack, cookie)
    assert (await stack.client.get("/app/", allow_redirects=False)).status == 200
    with transaction(stack.db) as session:
        session.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id)
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    _forget(stack, session_id)
    response = await stack.client.get("/app/", allow_redirects=False)
    assert response.status == 303
    # The browser is told to forget the dead cookie.
    assert "Max-Age=0" in _cookies(response)[COOKIE]


async def test_a_session_ended_from_the_api_stops_its_cookie(embedded_stack: Stack) -> None:
    stack = embedded_stack
    cookie = await _signed_in(stack)
    session_id = _session_id(stack, cookie)
    bearer = stack.headers(await _bearer(stack, MEMBER))  # the password ended older tokens
    listed = await stack.client.get("/v1/me/sessions", headers=bearer)
    assert str(session_id) in await listed.text()
    ended = await stack.client.delete(f"/v1/me/sessions/{session_id}", headers=bearer)
    assert ended.status == 204, await ended.text()
    assert (await stack.client.get("/app/", allow_redirects=False)).status == 303


async def test_a_deactivated_user_s_cookie_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    await _signed_in(stack)
    with transaction(stack.db) as session:
        session.execute(update(User).where(User.email == MEMBER).values(active=False))
    stack.client.app[USER_CACHE]._entries.clear()
    assert (await stack.client.get("/app/", allow_redirects=False)).status == 303


async def test_a_password_change_ends_the_cookies_of_earlier_sessions(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    cookie = await _signed_in(stack)
    session_id = _session_id(stack, cookie)
    with transaction(stack.db) as session:  # revoked by time alone, as a reset elsewhere does
        session.execute(
            update(User).where(User.email == MEMBER).values(tokens_valid_after=utcnow())
        )
    stack.client.app[USER_CACHE]._entries.clear()
    _forget(stack, session_id)
    assert (await stack.client.get("/app/", allow_redirects=False)).status == 303


async def test_a_session_idle_too_long_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    cookie = await _signed_in(stack)
    session_id = _session_id(stack, cookie)
    idle = dt.timedelta(seconds=stack.settings.session_idle_seconds + 1)
    with transaction(stack.db) as session:
        session.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id)
            .values(last_used_at=utcnow() - idle)
        )
    _forget(stack, session_id)
    stack.client.app[BROWSER_SESSIONS]._touched.clear()
    assert (await stack.client.get("/app/", allow_redirects=False)).status == 303


async def test_sign_out_ends_the_session_and_clears_the_cookie(embedded_stack: Stack) -> None:
    stack = embedded_stack
    cookie = await _signed_in(stack)
    session_id = _session_id(stack, cookie)
    token = await _page_csrf(stack)
    response = await stack.client.post(
        "/app/logout", data={"csrf_token": token}, allow_redirects=False
    )
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/app/login?done=signed_out"
    assert "Max-Age=0" in _cookies(response)[COOKIE]
    with stack.db() as session:
        row = session.get(AuthSession, session_id)
    assert row is not None and row.revoked_reason == "logout"
    assert len(_actions(stack, "logout")) == 1
    # The old cookie, sent again, no longer works.
    stack.client.session.cookie_jar.clear()
    again = await stack.client.get(
        "/app/", headers={"Cookie": f"{COOKIE}={cookie}"}, allow_redirects=False
    )
    assert again.status == 303
    page = await stack.client.get("/app/login?done=signed_out")
    assert "You are signed out." in await page.text()


async def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    cookie = await _signed_in(stack)
    session_id = _session_id(stack, cookie)
    for data in ({}, {"csrf_token": "not-the-token"}):
        response = await stack.client.post("/app/logout", data=data, allow_redirects=False)
        text = await response.text()
        assert response.status == 403, text
        assert "security token" in text
    with stack.db() as session:
        row = session.get(AuthSession, session_id)
    assert row is not None and row.revoked_at is None
    assert (await stack.client.get("/app/", allow_redirects=False)).status == 200


async def test_a_cookie_post_from_another_origin_is_refused(embedded_stack: Stack) -> None:
    stack = embedded_stack
    await _signed_in(stack)
    token = await _page_csrf(stack)
    own = f"http://{stack.client.host}:{stack.client.port}"
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": own, "Sec-Fetch-Site": "cross-site"},
    ):
        response = await stack.client.post(
            "/app/logout", data={"csrf_token": token}, headers=headers, allow_redirects=False
        )
        assert response.status == 403, headers
    response = await stack.client.post(
        "/app/logout",
        data={"csrf_token": token},
        headers={"Origin": own, "Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert response.status == 303
    # Our own host over https too: a proxy in front may end TLS without saying so.
    await _signed_in(stack)
    response = await stack.client.post(
        "/app/logout",
        data={"csrf_token": await _page_csrf(stack)},
        headers={"Origin": own.replace("http:", "https:")},
        allow_redirects=False,
    )
    assert response.status == 303


async def test_a_member_s_cookie_gets_the_forbidden_page_on_admin(embedded_stack: Stack) -> None:
    stack = embedded_stack
    await _signed_in(stack)
    response = await stack.client.get("/admin/", allow_redirects=False)
    text = await response.text()
    assert response.status == 403
    assert 'href="/app/"' in text
    # An unknown /admin path tells a member nothing more.
    response = await stack.client.get("/admin/no-such-page", allow_redirects=False)
    assert response.status == 403


async def test_bearer_tokens_still_open_the_pages(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await stack.client.get("/admin/", headers=stack.headers(stack.admin_token))
    assert response.status == 200
    response = await stack.client.get("/app/", headers=stack.headers())
    assert response.status == 200
    # A bad bearer token is a 401, not a trip to the sign-in form.
    response = await stack.client.get(
        "/app/", headers={"Authorization": "Bearer nope"}, allow_redirects=False
    )
    assert response.status == 401


async def test_over_tls_the_cookie_is_secure_and_host_only(embedded_stack: Stack) -> None:
    stack = embedded_stack
    _with_password(stack, MEMBER)
    # Only a trusted proxy is believed: the test client's address is not one here.
    response = await stack.client.get("/app/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in _cookies(response)[LOGIN_CSRF_COOKIE]


async def test_behind_a_trusted_tls_proxy_the_cookie_is_secure(
    aiohttp_client: Any, sqlite_url: str
) -> None:
    from conveyor.announcements import MemoryAnnouncements
    from conveyor.db import make_engine, make_sessionmaker
    from conveyor.http.app import create_app
    from tests.stack import build_container, make_users

    settings = settings_of(
        database_url=sqlite_url,
        broker_url="stub://",
        redis_url=None,
        mfa_required_roles="",
        trusted_proxies="127.0.0.1,::1",
    )
    db = make_sessionmaker(make_engine(sqlite_url, pool_size=5))
    container, _ = build_container(settings, db, MemoryAnnouncements())
    try:
        make_users(settings, db)
        set_password(db, MEMBER, PASSWORD)
        client = await aiohttp_client(create_app(container))
        tls = {"X-Forwarded-Proto": "https"}
        form = await client.get("/app/login", headers=tls)
        token = re.search(r'name="csrf_token" value="([^"]+)"', await form.text())
        assert token is not None
        assert "Secure" in _cookies(form)[LOGIN_CSRF_COOKIE]
        response = await client.post(
            "/app/login",
            data={"csrf_token": token.group(1), "email": MEMBER, "password": PASSWORD},
            headers={**tls, "Cookie": f"{LOGIN_CSRF_COOKIE}={token.group(1)}"},
            allow_redirects=False,
        )
        assert response.status == 303, await response.text()
        cookie = _cookies(response)[SECURE_COOKIE]
        assert "Secure" in cookie and "Path=/" in cookie and "Domain" not in cookie
        value = response.cookies[SECURE_COOKIE].value
        page = await client.get(
            "/app/", headers={**tls, "Cookie": f"{SECURE_COOKIE}={value}"}, allow_redirects=False
        )
        assert page.status == 200
        # The plain name is not read over TLS.
        client.session.cookie_jar.clear()
        plain = await client.get(
            "/app/", headers={**tls, "Cookie": f"{COOKIE}={value}"}, allow_redirects=False
        )
        assert plain.status == 303
    finally:
        container.close()


async def test_an_admin_without_mfa_acts_as_a_member(
    embedded_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = embedded_stack
    settings = stack.settings.model_copy(update={"mfa_required_roles": frozenset({"admin"})})
    monkeypatch.setattr(stack.container, "settings", settings)
    _with_password(stack, ADMIN)
    response = await _sign_in(stack, ADMIN, next="/admin/")
    # The page asked for is kept; the dashboard then refuses a member.
    assert response.headers["Location"] == "/admin/"
    page = await stack.client.get("/admin/", allow_redirects=False)
    assert page.status == 403
    assert "second factor" in await page.text()
    assert (await stack.client.get("/app/", allow_redirects=False)).status == 200


async def test_an_account_with_mfa_finishes_with_a_code(embedded_stack: Stack) -> None:
    stack = embedded_stack
    _with_password(stack, MEMBER)
    token = await _bearer(stack, MEMBER)
    secret = await _enable_totp(stack, token)
    response = await _sign_in(stack, next="/app/preferences")
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/app/login/mfa?next=%2Fapp%2Fpreferences"
    assert COOKIE not in response.cookies
    challenge = _cookies(response)[MFA_COOKIE]
    assert "HttpOnly" in challenge and "Path=/app/login/mfa" in challenge
    csrf = await _login_form(stack, "/app/login/mfa?next=%2Fapp%2Fpreferences")
    wrong = await stack.client.post(
        "/app/login/mfa",
        data={"csrf_token": csrf, "code": "000000", "next": "/app/preferences"},
        allow_redirects=False,
    )
    assert wrong.status == 401
    assert "Start again" in await wrong.text()
    code = totp.code_at(secret, time.time() + totp.PERIOD)
    response = await stack.client.post(
        "/app/login/mfa",
        data={"csrf_token": csrf, "code": code, "next": "/app/preferences"},
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/app/preferences"
    session_id = _session_id(stack, response.cookies[COOKIE].value)
    with stack.db() as session:
        row = session.get(AuthSession, session_id)
    assert row is not None and row.amr == ["pwd", "otp"]


async def test_the_code_page_without_a_sign_in_under_way_starts_again(
    embedded_stack: Stack,
) -> None:
    response = await embedded_stack.client.get("/app/login/mfa", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"].startswith("/app/login?")


async def _bearer(stack: Stack, email: str) -> str:
    response = await stack.client.post(
        "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    body = await response.json()
    assert response.status == 200, body
    return body["access_token"]  # type: ignore[no-any-return]


async def _enable_totp(stack: Stack, token: str) -> str:
    return (await _enable_totp_with_codes(stack, token))[0]


async def _enable_totp_with_codes(stack: Stack, token: str) -> tuple[str, list[str]]:
    """Turn TOTP on: the secret and the recovery codes."""
    headers = stack.headers(token)
    response = await stack.client.post(
        "/v1/me/mfa/totp", json={"password": PASSWORD}, headers=headers
    )
    secret: str = (await response.json())["secret"]
    confirmed = await stack.client.post(
        "/v1/me/mfa/totp/confirm", json={"code": totp.code_at(secret)}, headers=headers
    )
    body = await confirmed.json()
    assert confirmed.status == 200, body
    return secret, body["recovery_codes"]


def test_a_session_s_use_is_written_at_most_once_a_minute() -> None:
    now = [1000.0]
    cache = BrowserSessionCache(clock=lambda: now[0])
    session_id = uuid.uuid4()
    assert cache.due_for_touch(session_id)
    cache.touched(session_id)
    now[0] += 59
    assert not cache.due_for_touch(session_id)
    now[0] += 1
    assert cache.due_for_touch(session_id)


def test_cookies_need_a_secret_key() -> None:
    from conveyor.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        SessionCookies.of(settings_of(secret_key=None))
    one = SessionCookies.of(settings_of())
    session_id = uuid.uuid4()
    assert one.read(one.value(session_id)) == session_id
    assert one.csrf(session_id) != one.value(session_id).partition(".")[2]


async def test_a_sign_in_link_opens_a_session_once(embedded_stack: Stack) -> None:
    stack = embedded_stack
    settings = stack.settings.model_copy(update={"mfa_required_roles": frozenset({"admin"})})
    stack.container.settings = settings  # admins must use a second factor: a link counts
    with stack.db() as session:
        admin = session.scalars(select(User).where(User.email == ADMIN)).one()
    token = sign_in_links.issue(stack.db, admin.id, dt.timedelta(minutes=5))
    page = await stack.client.get(f"/app/login/link?token={token}")
    text = await page.text()
    assert page.status == 200 and f'value="{token}"' in text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', text)
    assert csrf is not None
    form = {"csrf_token": csrf.group(1), "token": token}
    response = await stack.client.post("/app/login/link", data=form, allow_redirects=False)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/admin/"
    assert (await stack.client.get("/admin/", allow_redirects=False)).status == 200
    again = await stack.client.post("/app/login/link", data=form, allow_redirects=False)
    assert again.status == 401
    assert "unknown, used or expired" in await again.text()
    assert [e.details["amr"] for e in _actions(stack, "login")] == [["cli"]]


async def test_the_login_form_sends_a_signed_in_browser_on(embedded_stack: Stack) -> None:
    stack = embedded_stack
    await _signed_in(stack)
    response = await stack.client.get("/app/login?next=/app/preferences", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/app/preferences"


async def test_a_recovery_code_finishes_a_sign_in_once(embedded_stack: Stack) -> None:
    stack = embedded_stack
    _with_password(stack, MEMBER)
    _, codes = await _enable_totp_with_codes(stack, await _bearer(stack, MEMBER))
    for expected in (303, 401):
        stack.client.session.cookie_jar.clear()
        response = await _sign_in(stack)
        assert response.headers["Location"].startswith("/app/login/mfa")
        csrf = await _login_form(stack, "/app/login/mfa")
        response = await stack.client.post(
            "/app/login/mfa", data={"csrf_token": csrf, "code": codes[0]}, allow_redirects=False
        )
        assert response.status == expected, await response.text()


@pytest.mark.parametrize("stack_settings", [{"login_account_rate": "2/15m"}])
async def test_too_many_attempts_show_the_form_with_retry_after(embedded_stack: Stack) -> None:
    stack = embedded_stack
    _with_password(stack, MEMBER)
    for _ in range(2):
        assert (await _sign_in(stack, password="wrong password")).status == 401
    response = await _sign_in(stack)
    text = await response.text()
    assert response.status == 429, text
    assert int(response.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins for this account" in text
    assert 'name="email"' in text
