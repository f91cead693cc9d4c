"""`conveyor dev` prints a sign-in link: it opens the dashboard as the dev admin, once."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.browser.browsing import axe_check, screenshot
from tests.e2e.processes import Processes, environment

pytestmark = pytest.mark.e2e


def test_the_dev_sign_in_link_opens_the_dashboard_once(
    browser: Browser, procs: Processes, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    dev, _ = procs.dev(environment({}), project)
    link = dev.wait_for_output(r"^sign-in: (\S+)$", timeout=5).group(1)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(link)
        expect(page.get_by_role("heading", level=1)).to_have_text("Sign in with a link")
        axe_check(page)
        screenshot(page, "login-link")
        with page.expect_navigation():
            page.get_by_role("button", name="Sign in").click()
        assert page.url.endswith("/admin/"), page.url
        expect(page.get_by_text("admin@localhost")).to_be_visible()
        # The link is spent.
        page.goto(link)
        with page.expect_navigation():
            page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("unknown, used or expired")
    finally:
        context.close()
