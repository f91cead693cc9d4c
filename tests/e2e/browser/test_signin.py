"""Signing in from a real browser (headless Chromium) against `conveyor web`: an admin with
TOTP reaches the dashboard, a member their own page and not the dashboard, a form posted
without its CSRF token changes nothing, and signing out ends the session."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from conveyor.models import Role
from conveyor.security import totp
from tests.e2e.browser.browsing import axe_check, screenshot, sign_in
from tests.e2e.browser.conftest import PASSWORD, BrowserServer, cookies_of

pytestmark = pytest.mark.e2e

ADMIN = "admin@example.com"
MEMBER = "member@example.com"
COOKIE = "conveyor_session"


@pytest.fixture(scope="module")
def users(server: BrowserServer) -> dict[str, str]:
    """The module's admin (with TOTP on, as admins must) and member; the admin's secret."""
    server.user(ADMIN, Role.ADMIN)
    server.user(MEMBER)
    return {ADMIN: server.enable_totp(ADMIN)}


def test_the_sign_in_page_is_accessible_and_says_what_went_wrong(
    page: Page, server: BrowserServer, users: dict[str, str]
) -> None:
    page.goto("/app/login")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    axe_check(page)
    screenshot(page, "login")
    page.set_viewport_size({"width": 390, "height": 760})
    screenshot(page, "login-phone")
    page.set_viewport_size({"width": 1280, "height": 800})
    sign_in(page, server.url, MEMBER, "not the password")
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    expect(page.get_by_label("Email address")).to_have_value(MEMBER)
    axe_check(page)
    screenshot(page, "login-wrong-password")


def test_an_admin_signs_in_with_a_code_and_lands_on_the_dashboard(
    page: Page, server: BrowserServer, users: dict[str, str]
) -> None:
    sign_in(page, server.url, ADMIN, PASSWORD)
    expect(page).to_have_url(re.compile(r"/app/login/mfa"))
    axe_check(page)
    screenshot(page, "login-code")
    code = totp.code_at(users[ADMIN], time.time() + totp.PERIOD)
    page.get_by_role("textbox", name="Code").fill(code)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.url}/admin/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    expect(page.get_by_role("link", name="Overview")).to_have_attribute("aria-current", "page")
    cookie = cookies_of(page, server.url)[COOKIE]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    axe_check(page)
    screenshot(page, "admin-overview")


def test_a_member_sees_their_page_and_not_the_dashboard(
    page: Page, server: BrowserServer, users: dict[str, str]
) -> None:
    sign_in(page, server.url, MEMBER, PASSWORD, next_path="/admin/")
    # Asked for the dashboard, the member is refused it, with a way to their own page.
    expect(page.get_by_role("heading", level=1)).to_have_text("403 Forbidden")
    screenshot(page, "admin-forbidden")
    axe_check(page)
    with page.expect_navigation():
        page.get_by_role("link", name="Your jobs").click()
    expect(page).to_have_url(f"{server.url}/app/")
    expect(page.get_by_text(MEMBER)).to_be_visible()
    axe_check(page)
    screenshot(page, "app-index")


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(
    page: Page, server: BrowserServer, users: dict[str, str]
) -> None:
    sign_in(page, server.url, MEMBER, PASSWORD)
    expect(page).to_have_url(f"{server.url}/app/")
    # The browser's cookie goes with these; the form's token does not.
    refused = page.request.post(f"{server.url}/app/logout", form={})
    assert refused.status == 403, refused.text()
    from_page = page.evaluate(
        "() => fetch('/app/logout', {method: 'POST', body: new URLSearchParams()})"
        ".then(r => r.status)"
    )
    assert from_page == 403
    page.reload()
    expect(page).to_have_url(f"{server.url}/app/")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def test_signing_out_ends_the_session(
    page: Page, server: BrowserServer, users: dict[str, str]
) -> None:
    sign_in(page, server.url, MEMBER, PASSWORD)
    expect(page).to_have_url(f"{server.url}/app/")
    cookie = cookies_of(page, server.url)[COOKIE]
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{server.url}/app/login?done=signed_out")
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    screenshot(page, "signed-out")
    assert COOKIE not in cookies_of(page, server.url)
    # The old cookie, put back, opens nothing: the session is over.
    page.context.add_cookies([{"name": COOKIE, "value": str(cookie["value"]), "url": server.url}])
    page.goto("/app/")
    expect(page).to_have_url(re.compile(r"/app/login\?next="))
