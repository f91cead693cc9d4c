"""An admin fixes what went wrong from the browser, against `conveyor web` and a worker of
the `system` pool: retries an error group and sees its jobs succeed; pauses a queue, sees
submissions wait, resumes it and sees them run. Then every admin page, with that data on it,
passes axe-core and is photographed at a laptop's and a phone's width."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page, expect

from conveyor.models import Role
from tests.e2e.browser.browsing import look_at, look_at_in_dark, sign_in_with_code
from tests.e2e.browser.conftest import PASSWORD, BrowserServer, open_page
from tests.e2e.processes import Api
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

ADMIN = "admin@example.com"
OPERATOR = "operator@example.com"
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
def member(server: BrowserServer) -> Api:
    """The API as the member whose jobs the admin looks after."""
    server.user(MEMBER)
    return server.api_as(MEMBER)


@pytest.fixture(scope="module")
def admin(browser: Browser, server: BrowserServer) -> Iterator[Page]:
    """A page signed in as the module's admin, shared by its tests (one sign-in)."""
    server.user(ADMIN, Role.ADMIN)
    server.user(OPERATOR, Role.OPERATOR)
    secret = server.enable_totp(ADMIN)
    with open_page(browser, server) as page:
        sign_in_with_code(page, server.url, ADMIN, PASSWORD, secret)
        expect(page).to_have_url(f"{server.url}/admin/")
        yield page


def _failed(member: Api, count: int) -> list[dict[str, Any]]:
    """`count` jobs of `testing.fail_first` submitted by the member, once they have failed."""
    jobs = [member.submit("testing.fail_first", {}) for _ in range(count)]
    finished = [member.wait_finished(job["id"]) for job in jobs]
    assert {job["status"] for job in finished} == {"failed"}, finished
    return finished


def test_an_admin_retries_an_error_group_and_sees_its_jobs_succeed(
    admin: Page, member: Api, server: BrowserServer
) -> None:
    failed = _failed(member, 3)
    admin.goto("/admin/errors")
    row = admin.get_by_role("row").filter(has_text="testing.fail_first")
    expect(row).to_contain_text("ConnectionError")
    expect(row.get_by_role("cell").nth(2)).to_have_text("3")
    with admin.expect_navigation():
        row.get_by_role("link", name=re.compile("ConnectionError")).click()
    expect(admin.get_by_role("heading", level=1)).to_contain_text("testing.fail_first")
    expect(admin.get_by_text("the service was away").first).to_be_visible()
    for job in failed:
        expect(admin.locator(f'tbody a[href="/admin/jobs/{job["id"]}"]')).to_be_visible()
    with admin.expect_navigation():
        admin.get_by_role("button", name="Retry all 3 jobs").click()
    expect(admin).to_have_url(f"{server.url}/admin/errors?done=retried")
    expect(admin.get_by_role("status")).to_have_text("The group's jobs were queued again.")
    expect(admin.get_by_role("row").filter(has_text="testing.fail_first")).to_have_count(0)
    # Each job's page follows it live, without a reload, until it has succeeded.
    for job in failed:
        admin.goto(f"/admin/jobs/{job['id']}")
        expect(admin.locator(".facts .status").first).to_have_text("succeeded", timeout=SETTLES)
        expect(admin.get_by_text('"attempt": 2')).to_be_visible()
    admin.goto("/admin/jobs?type=testing.fail_first&status=succeeded")
    expect(admin.locator("tbody tr")).to_have_count(3)


@pytest.fixture(scope="module")
def jobs(server: BrowserServer, member: Api, admin: Page) -> Iterator[dict[str, str]]:
    """Jobs in several states for the pages to show, by state; error groups of two types."""
    succeeded = member.submit("system.echo", {"greeting": "hello"})
    failed = member.submit("testing.explode", {"message": "the ledger does not balance"})
    _failed(member, 2)
    member.wait_finished(succeeded["id"])
    member.wait_finished(failed["id"])
    body = {"type": "system.sleep", "payload": {"seconds": 1}, "delay_seconds": 3600}
    status, scheduled = member.request("POST", "/v1/jobs", body)
    assert status == 202, scheduled
    running = member.submit("system.sleep", {"seconds": 60, "steps": 60})
    wait_until(lambda: member.get(running["id"])["progress"], timeout=20)
    yield {
        "succeeded": succeeded["id"],
        "failed": failed["id"],
        "scheduled": scheduled["id"],
        "running": running["id"],
        "member": str(server.users[MEMBER].id),
        "group": urlencode({"type": "testing.explode", "error_type": "RuntimeError"}),
    }
    # The worker stops at once at the end of the module, with no job in hand.
    status, _ = member.request("POST", f"/v1/jobs/{running['id']}/cancel")
    assert status == 202, status
    member.wait_finished(running["id"])


ADMIN_PAGES = {
    "admin-overview": "/admin/",
    "admin-queues-busy": "/admin/queues",
    "admin-queue-purge-confirm": "/admin/queues/system/purge",
    "admin-workers-busy": "/admin/workers",
    "admin-notifications-none": "/admin/notifications",
    "admin-jobs": "/admin/jobs",
    "admin-jobs-failed": "/admin/jobs?status=failed",
    "admin-jobs-none": "/admin/jobs?type=system.fail",
    "admin-job-failed": "/admin/jobs/{failed}",
    "admin-job-running": "/admin/jobs/{running}",
    "admin-job-scheduled": "/admin/jobs/{scheduled}",
    "admin-errors": "/admin/errors",
    "admin-error-group": "/admin/errors/group?{group}",
    "admin-error-discard": "/admin/errors/group/discard?{group}",
    "admin-users": "/admin/users",
    "admin-user": "/admin/users/{member}",
    "admin-audit": "/admin/audit",
}


@pytest.mark.parametrize("name", list(ADMIN_PAGES))
def test_the_admin_pages_are_accessible_on_a_laptop_and_a_phone(
    admin: Page, jobs: dict[str, str], name: str
) -> None:
    admin.goto(ADMIN_PAGES[name].format(**jobs))
    expect(admin.get_by_role("heading", level=1)).to_be_visible()
    look_at(admin, name)


@pytest.mark.parametrize(
    "name", ["admin-overview", "admin-jobs", "admin-job-failed", "admin-audit"]
)
def test_the_admin_pages_are_readable_in_the_dark(
    admin: Page, jobs: dict[str, str], name: str
) -> None:
    admin.goto(ADMIN_PAGES[name].format(**jobs))
    look_at_in_dark(admin, name)
