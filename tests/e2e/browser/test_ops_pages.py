"""The operators' pages in a real browser (headless Chromium) against `conveyor web` and a
system worker pool: an admin signs in, watches jobs finish on the overview (its live part
refreshes itself), finds the worker, pauses the system queue and sees a submitted job wait,
resumes it and sees the job run, and purges the waiting jobs through the confirmation page.
Every page passes axe-core and leaves a screenshot."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from conveyor.models import Role
from tests.e2e.browser.browsing import axe_check, screenshot, sign_in_with_code
from tests.e2e.browser.conftest import PASSWORD, BrowserServer
from tests.e2e.processes import Api

pytestmark = pytest.mark.e2e

ADMIN = "operations@example.com"
#: Long enough for the page's script to refresh a live part (every 5 s) and the worker to act.
LIVE = 15_000


@pytest.fixture(scope="module")
def pools() -> tuple[str, ...]:
    return ("system",)


@pytest.fixture(scope="module")
def admin(server: BrowserServer) -> tuple[str, Api]:
    """The module's admin, with TOTP on (as admins must): its secret, and the API as its
    password-only sign-in (which acts as a member: enough to submit jobs)."""
    server.user(ADMIN, Role.ADMIN)
    api = server.api_as(ADMIN)
    return server.enable_totp(ADMIN), api


def _sign_in(page: Page, server: BrowserServer, secret: str) -> None:
    sign_in_with_code(page, server.url, ADMIN, PASSWORD, secret)
    expect(page).to_have_url(f"{server.url}/admin/")


def _look(page: Page, name: str) -> None:
    axe_check(page)
    screenshot(page, name)


def _status(api: Api, job_id: str) -> str:
    return str(api.get(job_id)["status"])


def test_an_operator_watches_and_steers_the_queues_from_the_dashboard(
    page: Page, server: BrowserServer, admin: tuple[str, Api]
) -> None:
    secret, api = admin
    _sign_in(page, server, secret)
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

    # Jobs finish; the overview's live part shows them without a reload.
    for job in [api.submit("system.echo", {"n": n}) for n in range(3)]:
        assert api.wait_finished(job["id"])["status"] == "succeeded"
    expect(page.get_by_text(re.compile(r"3 jobs finished: 3 succeeded"))).to_be_visible(
        timeout=LIVE
    )
    expect(page.locator("svg.chart rect.succeeded").first).to_be_attached()
    _look(page, "admin-overview-with-jobs")

    with page.expect_navigation():
        page.get_by_role("link", name="Workers", exact=True).click()
    expect(page.locator("#pool-system")).to_be_visible()
    _look(page, "admin-workers")

    with page.expect_navigation():
        page.get_by_role("link", name="Notifications", exact=True).click()
    expect(page.get_by_role("heading", name="Deliveries of the last hour")).to_be_visible()
    _look(page, "admin-notifications")

    # Pause: a job submitted now waits, and the page shows it waiting without a reload.
    with page.expect_navigation():
        page.get_by_role("link", name="Queues", exact=True).click()
    row = page.locator("#queue-system")
    with page.expect_navigation():
        row.get_by_role("button", name="Pause system").click()
    expect(page.get_by_role("status")).to_contain_text("The queue was paused")
    expect(row.get_by_text("paused", exact=True)).to_be_visible()
    held = api.submit("system.echo", {"held": True})
    expect(row.locator("td").nth(1)).to_have_text("1", timeout=LIVE)  # waiting
    assert _status(api, held["id"]) == "queued"
    _look(page, "admin-queues-paused")
    page.set_viewport_size({"width": 390, "height": 760})
    screenshot(page, "admin-queues-paused-phone")
    page.set_viewport_size({"width": 1280, "height": 800})

    # Resume: the job that waited runs.
    with page.expect_navigation():
        row.get_by_role("button", name="Resume system").click()
    expect(page.get_by_role("status")).to_contain_text("The queue was resumed")
    assert api.wait_finished(held["id"])["status"] == "succeeded"

    # Purge, through its confirmation page: the waiting jobs are cancelled, rows and all.
    with page.expect_navigation():
        row.get_by_role("button", name="Pause system").click()
    waiting = [api.submit("system.echo", {"purge": n}) for n in range(2)]
    expect(row.locator("td").nth(1)).to_have_text("2", timeout=LIVE)
    with page.expect_navigation():
        row.get_by_role("link", name="Purge system…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Purge the queue system")
    _look(page, "admin-queue-purge")
    with page.expect_navigation():
        page.get_by_role("button", name="Cancel 2 jobs of system").click()
    expect(page.get_by_role("status")).to_have_text(
        "The queue was purged: 2 waiting jobs were cancelled."
    )
    assert [_status(api, job["id"]) for job in waiting] == ["cancelled", "cancelled"]
    with page.expect_navigation():
        page.locator("#queue-system").get_by_role("button", name="Resume system").click()
    expect(page.get_by_role("status")).to_contain_text("The queue was resumed")
    _look(page, "admin-queues")
