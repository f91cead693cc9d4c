"""What browser tests do with a page: sign in, take a screenshot to look at, check
accessibility with axe-core, and notice what the Content-Security-Policy blocked.

Chromium is Debian's (`/usr/bin/chromium`), driven by Playwright; axe-core comes from the npm
registry (`make browser-deps` puts it under `.cache/npm`). A test run by `make test` (which
sets REQUIRE_BROWSER) fails when either is missing; elsewhere it is skipped, saying how to
get them."""

from __future__ import annotations

import functools
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, ViewportSize

from conveyor.security import totp

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / ".cache" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
#: Chromium's switches for a headless run in a container, without its background chatter.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
#: The viewports the pages are looked at in: a laptop's and a phone's.
LAPTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
#: axe-core impacts that fail a page.
BLOCKING = frozenset({"serious", "critical"})
REQUIRE_BROWSER = "REQUIRE_BROWSER"


def browser_required() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in (REQUIRE_BROWSER, "CI"))


def missing() -> list[str]:
    """What the browser tests need and this machine lacks."""
    problems = []
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        problems.append("Debian's chromium (apt-get install chromium)")
    if not AXE.exists():
        problems.append("axe-core (npm install --prefix .cache/npm axe-core@4)")
    return problems


def need_browser() -> None:
    """Fail (under `make test` or CI) or skip unless Chromium and axe-core are here."""
    problems = missing()
    if not problems:
        return
    message = "the browser tests need " + " and ".join(problems) + "; `make browser-deps`"
    if browser_required():
        pytest.fail(message)
    pytest.skip(message)


def sign_in(page: Page, base_url: str, email: str, password: str, *, next_path: str = "") -> None:
    """Sign in through the form, as a person would; waits for the page after it."""
    query = f"?next={next_path}" if next_path else ""
    page.goto(f"{base_url}/app/login{query}")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(password)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def sign_in_with_code(
    page: Page, base_url: str, email: str, password: str, secret: str, *, next_path: str = ""
) -> None:
    """Sign in with the password, then with a TOTP code of `secret` (the next period's: the
    current one was spent confirming it), as an admin must."""
    sign_in(page, base_url, email, password, next_path=next_path)
    page.get_by_role("textbox", name="Code").fill(totp.code_at(secret, time.time() + totp.PERIOD))
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG of what the page shows now, under test-artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@functools.cache
def _axe_source() -> str:
    return AXE.read_text()


def axe_check(page: Page) -> None:
    """Fail on axe-core's serious or critical violations of the page as it is now. The script
    is evaluated through the browser's debugging protocol, so the page's CSP stays on."""
    page.evaluate(_axe_source())
    result: dict[str, Any] = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    blocking = [v for v in result["violations"] if v.get("impact") in BLOCKING]
    report = "\n".join(
        f"{v['impact']}: {v['id']}: {v['help']} at "
        + ", ".join(str(node["target"]) for node in v["nodes"][:5])
        for v in blocking
    )
    assert not blocking, f"accessibility violations on {page.url}:\n{report}"


def look_at(page: Page, name: str) -> None:
    """Check the page as it is now with axe-core and take its screenshots, at a laptop's
    width (`<name>.png`) and at a phone's (`<name>-phone.png`, checked again: what is hidden or
    moved on a small screen must stay accessible); the page is back at a laptop's size after."""
    axe_check(page)
    screenshot(page, name)
    page.set_viewport_size(PHONE)
    try:
        axe_check(page)
        screenshot(page, f"{name}-phone")
    finally:
        page.set_viewport_size(LAPTOP)


def look_at_in_dark(page: Page, name: str) -> None:
    """`look_at` with the system's dark colour scheme (`<name>-dark.png`, `-dark-phone.png`):
    the pages follow it, and their contrast must hold there too."""
    page.emulate_media(color_scheme="dark")
    try:
        look_at(page, f"{name}-dark")
    finally:
        page.emulate_media(color_scheme="light")
