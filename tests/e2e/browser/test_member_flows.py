"""A member uses their page from the browser, against `conveyor web` and a worker of the
`system` pool: submits a job through the form generated from its type's JSON Schema (a bad
value is named next to its field) and watches it finish without reloading. Then each of the
member's pages, with jobs on them, passes axe-core and is photographed at a laptop's and a
phone's width."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.browser.browsing import look_at, look_at_in_dark, sign_in
from tests.e2e.browser.conftest import PASSWORD, BrowserServer, open_page
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

MEMBER = "member@example.com"
#: How long a job may take to be seen finished on a page (a worker's poll, a page's refresh).
SETTLES = 20_000


@pytest.fixture(scope="module")
def pools() -> tuple[str, ...]:
    return ("system",)


@pytest.fixture(scope="module")
def test_jobs() -> bool:
    return True


@pytest.fixture(scope="module")
def member(browser: Browser, server: BrowserServer) -> Iterator[Page]:
    """A page signed in as the module's member, shared by its tests (one sign-in)."""
    server.user(MEMBER)
    with open_page(browser, server) as page:
        sign_in(page, server.url, MEMBER, PASSWORD)
        expect(page).to_have_url(f"{server.url}/app/")
        yield page


def test_a_member_submits_a_job_through_its_form_and_watches_it_finish(
    member: Page, server: BrowserServer
) -> None:
    member.goto("/app/")
    with member.expect_navigation():
        member.get_by_role("main").get_by_role("link", name="New job").click()
    with member.expect_navigation():
        member.get_by_role("link", name="testing.compose").click()
    expect(member.get_by_role("heading", level=1)).to_have_text("New job: testing.compose")
    title = member.get_by_label("Title")
    # The schema asks for three characters at least, which the browser does not check.
    title.fill("Q3")
    member.get_by_label("Pages").fill("6")
    member.get_by_label("Draft").check()
    with member.expect_navigation():
        member.get_by_role("button", name="Submit the job").click()
    expect(member.get_by_role("alert")).to_contain_text("The job was not submitted")
    expect(title).to_have_attribute("aria-invalid", "true")
    expect(member.locator("#error-payload\\.title")).to_contain_text("at least 3 characters")
    expect(title).to_have_accessible_description(re.compile("at least 3 characters"))
    # What was typed is still there, to be corrected.
    expect(member.get_by_label("Pages")).to_have_value("6")
    expect(member.get_by_label("Draft")).to_be_checked()
    look_at(member, "app-new-job-invalid")
    title.fill("Quarterly report")
    with member.expect_navigation():
        member.get_by_role("button", name="Submit the job").click()
    expect(member).to_have_url(re.compile(r"/app/jobs/[0-9a-f-]{36}\?done=submitted$"))
    expect(member.get_by_role("status")).to_have_text("Your job was submitted.")
    badge = member.locator(".facts .status").first
    expect(badge).to_have_text(re.compile("^(queued|running)$"))
    # The page is never reloaded: a mark left on it now is still there when the job is done.
    member.evaluate("() => { window.stillThisPage = true; }")
    expect(badge).to_have_text("succeeded", timeout=SETTLES)
    assert member.evaluate("() => window.stillThisPage === true")
    expect(member.get_by_text('"title": "Quarterly report"').first).to_be_visible()
    expect(member.get_by_text('"draft": true').first).to_be_visible()
    expect(member.get_by_role("button", name="Cancel this job")).to_have_count(0)


@pytest.fixture(scope="module")
def jobs(server: BrowserServer, member: Page) -> Iterator[dict[str, str]]:
    """The member's jobs in several states, by state: what their pages show."""
    api = server.api_as(MEMBER)
    succeeded = api.submit("system.echo", {"greeting": "hello"})
    failed = api.submit("testing.fail_first", {"message": "the printer is out of paper"})
    for job in (succeeded, failed):
        api.wait_finished(job["id"])
    body = {"type": "system.sleep", "payload": {"seconds": 1}, "delay_seconds": 3600}
    status, scheduled = api.request("POST", "/v1/jobs", body)
    assert status == 202, scheduled
    running = api.submit("system.sleep", {"seconds": 60, "steps": 60})
    wait_until(lambda: api.get(running["id"])["progress"], timeout=20)
    yield {
        "succeeded": succeeded["id"],
        "failed": failed["id"],
        "scheduled": scheduled["id"],
        "running": running["id"],
    }
    # The worker stops at once at the end of the module, with no job in hand.
    status, _ = api.request("POST", f"/v1/jobs/{running['id']}/cancel")
    assert status == 202, status
    api.wait_finished(running["id"])


MEMBER_PAGES = {
    "app-index": "/app/",
    "app-index-failed": "/app/?status=failed",
    "app-job-types": "/app/jobs/new",
    "app-new-job": "/app/jobs/new?type=testing.compose",
    "app-job-succeeded": "/app/jobs/{succeeded}",
    "app-job-failed": "/app/jobs/{failed}",
    "app-job-scheduled": "/app/jobs/{scheduled}",
    "app-job-running": "/app/jobs/{running}",
    "app-preferences": "/app/preferences",
}


@pytest.mark.parametrize("name", list(MEMBER_PAGES))
def test_the_members_pages_are_accessible_on_a_laptop_and_a_phone(
    member: Page, jobs: dict[str, str], name: str
) -> None:
    member.goto(MEMBER_PAGES[name].format(**jobs))
    expect(member.get_by_role("heading", level=1)).to_be_visible()
    look_at(member, name)


@pytest.mark.parametrize("name", ["app-index", "app-job-failed", "app-preferences"])
def test_the_members_pages_are_readable_in_the_dark(
    member: Page, jobs: dict[str, str], name: str
) -> None:
    member.goto(MEMBER_PAGES[name].format(**jobs))
    look_at_in_dark(member, name)
