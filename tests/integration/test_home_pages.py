"""The user's pages on PostgreSQL and RabbitMQ: a job submitted through the form (with an
idempotency key, whose lock is PostgreSQL's) runs and shows its result; the list pages by
cursor through the member's own jobs only; preferences are saved."""

from __future__ import annotations

import pytest

from conveyor.services import subscriptions
from conveyor.services.subscriptions import Choice
from conveyor.services.users import get_by_email
from tests.stack import Stack
from tests.unit.http.test_home import get_page, post_form

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_kind() -> str:
    return "rabbitmq"  # one broker is enough: the pages read the database


async def test_a_job_submitted_through_the_form_runs_and_shows_its_result(stack: Stack) -> None:
    form = {"payload.seconds": "0.05", "payload.steps": "2", "idempotency_key": "form-1"}
    first = await post_form(stack, "/app/jobs/new?type=system.sleep", form)
    again = await post_form(stack, "/app/jobs/new?type=system.sleep", form)
    assert first.status == again.status == 303, await first.text()
    url = first.headers["Location"].partition("?")[0]
    assert again.headers["Location"] == f"{url}?done=replayed"
    job_id = url.rsplit("/", 1)[1]
    await stack.wait_for(job_id, "succeeded")
    assert stack.row(job_id).payload == {"seconds": 0.05, "steps": 2}
    text = await get_page(stack, url)
    assert "status-succeeded" in text and "<h2>Result</h2>" in text
    await get_page(stack, url, stack.other_token, status=404)


async def test_the_list_pages_through_the_member_s_own_jobs(stack: Stack) -> None:
    mine = [await stack.submit("system.echo", {"n": i}) for i in range(3)]
    theirs = await stack.submit("system.echo", {"n": 9}, token=stack.other_token)
    seen: list[str] = []
    url = "/app/?limit=2"
    while url:
        text = await get_page(stack, url)
        assert theirs["id"] not in text
        seen += [job["id"] for job in mine if job["id"] in text]
        older = text.split('">Older</a>')[0].rsplit('href="', 1)[-1] if ">Older<" in text else ""
        url = older.replace("&amp;", "&")
    assert sorted(seen) == sorted(job["id"] for job in mine)


async def test_preferences_are_saved(stack: Stack) -> None:
    member = get_by_email(stack.db, "member@example.com")
    response = await post_form(stack, "/app/preferences", {"welcome.email": "off"})
    assert response.status == 303
    assert subscriptions.list_for_user(stack.db, member.id) == [Choice("welcome", "email", False)]
