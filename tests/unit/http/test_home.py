"""The user's pages at /app: their own jobs (live), a job's page with cancel and retry, the
form that submits a job, and the notification preferences."""

from __future__ import annotations

import re
import uuid

from aiohttp import ClientResponse

from conveyor.services import subscriptions
from conveyor.services.subscriptions import Choice
from conveyor.services.users import get_by_email
from tests.stack import Stack


async def page(response: ClientResponse, status: int = 200) -> str:
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"].startswith("text/html")
    return text


async def get_page(stack: Stack, url: str, token: str | None = None, status: int = 200) -> str:
    return await page(await stack.client.get(url, headers=stack.headers(token)), status)


async def post_form(
    stack: Stack, url: str, data: dict[str, str], token: str | None = None
) -> ClientResponse:
    return await stack.client.post(
        url, data=data, headers=stack.headers(token), allow_redirects=False
    )


def _field(text: str, name: str) -> str:
    """The `.field` block of the form input `name`."""
    start = text.index(f'name="{name}"')
    block = text.rfind('<div class="field', 0, start)
    return text[block : text.index("</div>", start)]


async def test_a_member_sees_their_own_jobs_only(embedded_stack: Stack) -> None:
    stack = embedded_stack
    mine = await stack.submit("system.echo", {"n": 1})
    theirs = await stack.submit("system.echo", {"n": 2}, token=stack.other_token)
    admins = await stack.submit("system.echo", {"n": 3}, token=stack.admin_token)
    text = await get_page(stack, "/app/")
    assert text.startswith("<!doctype html>")
    assert mine["id"] in text and theirs["id"] not in text and admins["id"] not in text
    assert 'data-refresh="/app/jobs/live?' in text
    assert "<progress" in text or "status-" in text
    # An admin's own page lists the admin's jobs, not everyone's (that is /admin).
    text = await get_page(stack, "/app/", stack.admin_token)
    assert admins["id"] in text and mine["id"] not in text
    # The live part alone.
    fragment = await get_page(stack, "/app/jobs/live")
    assert not fragment.lstrip().startswith("<!doctype")
    assert mine["id"] in fragment and theirs["id"] not in fragment


async def test_jobs_submitted_together_are_told_apart_by_their_ids_end(
    embedded_stack: Stack,
) -> None:
    """A UUIDv7 starts with its time: the list shows the random end, as the admin pages do."""
    stack = embedded_stack
    ids = [(await stack.submit("system.echo", {"n": n}))["id"] for n in range(2)]
    text = await get_page(stack, "/app/")
    for job_id in ids:
        assert f'<span class="muted mono" title="{job_id}">…{job_id[-12:]}</span>' in text


async def test_the_type_filter_offers_the_types_users_submit(embedded_stack: Stack) -> None:
    stack = embedded_stack
    text = await get_page(stack, "/app/")
    assert '<option value="system.echo">' in text
    assert '<option value="notifications.deliver"' not in text
    # Filtering by an internal type by URL still works, and the form shows it.
    text = await get_page(stack, "/app/?type=notifications.deliver")
    assert '<option value="notifications.deliver" selected>' in text


async def test_the_list_filters_by_status_and_type_and_pages_by_cursor(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    echoes = [await stack.submit("system.echo", {"n": i}) for i in range(3)]
    slept = await stack.submit("system.sleep", {"seconds": 0})
    text = await get_page(stack, "/app/?type=system.sleep")
    assert slept["id"] in text and all(e["id"] not in text for e in echoes)
    text = await get_page(stack, "/app/?type=system.echo&limit=2")
    assert echoes[2]["id"] in text and echoes[1]["id"] in text and echoes[0]["id"] not in text
    older = re.search(r'href="(/app/\?[^"]*cursor=[^"]+)">Older', text)
    assert older is not None
    text = await get_page(stack, older.group(1).replace("&amp;", "&"))
    assert echoes[0]["id"] in text and echoes[1]["id"] not in text
    await stack.wait_for(slept["id"], "succeeded")
    text = await get_page(stack, "/app/?status=succeeded&type=system.sleep")
    assert slept["id"] in text
    assert "No jobs of yours match" in await get_page(stack, "/app/?status=cancelled")


async def test_bad_list_parameters_answer_a_422_page_naming_them(embedded_stack: Stack) -> None:
    stack = embedded_stack
    for query, field in (
        ("status=lost", "status"),
        ("type=no.such", "type"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=x", "limit"),
        ("cursor=forged", "cursor"),
    ):
        text = await get_page(stack, f"/app/?{query}", status=422)
        assert f"<li>{field}:" in text, query
        await get_page(stack, f"/app/jobs/live?{query}", status=422)


async def test_a_job_s_page_shows_it_and_another_member_gets_404(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.echo", {"greeting": "hello"})
    await stack.wait_for(job["id"], "succeeded")
    text = await get_page(stack, f"/app/jobs/{job['id']}")
    assert "status-succeeded" in text and "hello" in text
    assert "<h2>Result</h2>" in text and "<h2>Events</h2>" in text
    assert "data-refresh-stop" in text  # finished: the page stops refreshing
    assert "Cancel this job" not in text and "Retry this job" not in text
    fragment = await get_page(stack, f"/app/jobs/{job['id']}/live")
    assert "status-succeeded" in fragment and "<!doctype" not in fragment
    for token in (stack.other_token, stack.admin_token):
        await get_page(stack, f"/app/jobs/{job['id']}", token, status=404)
        await get_page(stack, f"/app/jobs/{job['id']}/live", token, status=404)
    await get_page(stack, f"/app/jobs/{uuid.uuid4()}", status=404)
    await get_page(stack, "/app/jobs/not-an-id", status=404)


async def test_a_member_cancels_a_waiting_job_and_retries_it(embedded_stack: Stack) -> None:
    stack = embedded_stack
    response = await post_form(
        stack, "/app/jobs/new?type=system.sleep", {"payload.seconds": "0", "delay_seconds": "600"}
    )
    assert response.status == 303, await response.text()
    url = response.headers["Location"].partition("?")[0]
    job_id = url.rsplit("/", 1)[1]
    assert stack.row(job_id).status == "scheduled"
    text = await get_page(stack, url)
    assert "Cancel this job" in text and "data-refresh-stop" not in text
    # Another member cannot cancel it.
    response = await post_form(stack, f"{url}/cancel", {}, stack.other_token)
    await page(response, 404)
    response = await post_form(stack, f"{url}/cancel", {})
    assert response.status == 303
    assert response.headers["Location"] == f"{url}?done=cancelled"
    assert stack.row(job_id).status == "cancelled"
    text = await get_page(stack, response.headers["Location"])
    assert "The job was cancelled." in text and "Retry this job" in text
    response = await post_form(stack, f"{url}/cancel", {})  # already cancelled: nothing to do
    assert response.status == 303
    response = await post_form(stack, f"{url}/retry", {})
    assert response.headers["Location"] == f"{url}?done=retried"
    await stack.wait_for(job_id, "succeeded")
    response = await post_form(stack, f"{url}/retry", {})  # succeeded: not retryable
    assert response.headers["Location"] == f"{url}?done=not_retryable"
    response = await post_form(stack, f"{url}/cancel", {})
    assert response.headers["Location"] == f"{url}?done=finished"


async def test_a_running_job_is_asked_to_stop(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job = await stack.submit("system.sleep", {"seconds": 30, "steps": 300})
    await stack.wait_for(job["id"], "running")
    url = f"/app/jobs/{job['id']}"
    response = await post_form(stack, f"{url}/cancel", {})
    assert response.headers["Location"] == f"{url}?done=stopping"
    live = await get_page(stack, f"{url}/live")
    assert "asked to stop" in live or "status-cancelled" in live  # it may have stopped already
    await stack.wait_for(job["id"], "cancelled")
    assert "data-refresh-stop" in await get_page(stack, f"{url}/live")


async def test_the_new_job_page_offers_the_public_job_types(embedded_stack: Stack) -> None:
    stack = embedded_stack
    text = await get_page(stack, "/app/jobs/new")
    assert "/app/jobs/new?type=system.sleep" in text
    assert "notifications." not in text  # internal types are not offered
    text = await get_page(stack, "/app/jobs/new?type=system.sleep")
    seconds = _field(text, "payload.seconds")
    assert 'type="number"' in seconds and 'max="3600"' in seconds and 'value="1"' in seconds
    assert "How long to sleep." in seconds
    assert 'name="delay_seconds"' in text and 'name="idempotency_key"' in text
    await get_page(stack, "/app/jobs/new?type=no.such", status=422)
    # Conveyor's own job types are not offered, nor taken.
    await get_page(stack, "/app/jobs/new?type=notifications.deliver", status=422)
    response = await post_form(stack, "/app/jobs/new?type=notifications.deliver", {})
    await page(response, 422)


async def test_submitting_the_form_creates_the_job_with_a_typed_payload(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    response = await post_form(
        stack, "/app/jobs/new?type=system.sleep", {"payload.seconds": "0.05", "payload.steps": "2"}
    )
    assert response.status == 303, await response.text()
    location = response.headers["Location"]
    assert location.endswith("?done=submitted")
    job_id = location.partition("?")[0].rsplit("/", 1)[1]
    row = stack.row(job_id)
    assert row.payload == {"seconds": 0.05, "steps": 2}
    assert isinstance(row.payload["steps"], int)
    assert row.owner_id == get_by_email(stack.db, "member@example.com").id
    assert "Your job was submitted." in await get_page(stack, location)
    await stack.wait_for(job_id, "succeeded")
    # A free-form payload, and an idempotency key that gives the same job back.
    form = {"payload": '{"a": [1, true]}', "idempotency_key": "k-1"}
    first = await post_form(stack, "/app/jobs/new?type=system.echo", form)
    again = await post_form(stack, "/app/jobs/new?type=system.echo", form)
    assert first.status == again.status == 303
    assert again.headers["Location"].endswith("?done=replayed")
    echo_id = first.headers["Location"].partition("?")[0].rsplit("/", 1)[1]
    assert again.headers["Location"].startswith(f"/app/jobs/{echo_id}?")
    assert stack.row(echo_id).payload == {"a": [1, True]}
    # Run again: the form starts with an earlier job's input.
    text = await get_page(stack, f"/app/jobs/{job_id}")
    again_url = f"/app/jobs/new?type=system.sleep&amp;from={job_id}"
    assert again_url in text
    text = await get_page(stack, again_url.replace("&amp;", "&"))
    assert 'value="0.05"' in _field(text, "payload.seconds")
    assert 'value="2"' in _field(text, "payload.steps")
    await get_page(stack, again_url.replace("&amp;", "&"), stack.other_token, status=404)
    await get_page(stack, f"/app/jobs/new?type=system.echo&from={job_id}", status=422)
    await get_page(stack, "/app/jobs/new?type=system.echo&from=nope", status=422)


async def test_validation_errors_are_shown_next_to_their_fields_with_the_values_kept(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    response = await post_form(
        stack,
        "/app/jobs/new?type=system.sleep",
        {"payload.seconds": "5000", "payload.steps": "two", "delay_seconds": "-1"},
    )
    text = await page(response, 422)
    seconds = _field(text, "payload.seconds")
    assert "invalid" in seconds and 'value="5000"' in seconds
    assert "less than or equal to 3600" in seconds
    steps = _field(text, "payload.steps")
    assert "must be a whole number" in steps and 'value="two"' in steps
    assert "invalid" in _field(text, "delay_seconds")
    assert "The job was not submitted" in text
    # A payload that is not an object, and an unknown field, for a type that takes any.
    response = await post_form(stack, "/app/jobs/new?type=system.echo", {"payload": "[1]"})
    assert "must be a JSON object" in _field(await page(response, 422), "payload")
    response = await post_form(
        stack, "/app/jobs/new?type=system.fail", {"payload.failures": "1", "payload": "{}"}
    )
    assert response.status == 303  # the extra textarea is not offered, nor read, for it
    response = await post_form(stack, "/app/jobs/new", {})
    await page(response, 422)


async def test_deeply_nested_json_is_an_error_of_its_field(embedded_stack: Stack) -> None:
    """As the API refuses it (400 "recursion limit exceeded"), never a 500."""
    stack = embedded_stack
    for depth in (300, 5000):
        nested = '{"a": ' + "[" * depth + "]" * depth + "}"
        response = await post_form(stack, "/app/jobs/new?type=system.echo", {"payload": nested})
        assert "nested too deeply" in _field(await page(response, 422), "payload"), depth


async def test_a_member_saves_notification_preferences(embedded_stack: Stack) -> None:
    stack = embedded_stack
    member = get_by_email(stack.db, "member@example.com")
    # A choice the form does not show (made through the API) is kept.
    subscriptions.replace_for_user(stack.db, member.id, [Choice("welcome", "*", False)])
    text = await get_page(stack, "/app/preferences")
    assert 'name="job_finished.email"' in text and 'name="*.push"' in text
    assert "password_reset" in text and "Always sent" in text
    assert 'name="password_reset.email"' not in text  # always sent: no choice
    response = await post_form(
        stack, "/app/preferences", {"job_finished.email": "off", "*.sms": "on"}
    )
    assert response.status == 303
    assert response.headers["Location"] == "/app/preferences?done=saved"
    stored = set(subscriptions.list_for_user(stack.db, member.id))
    assert stored == {
        Choice("job_finished", "email", False),
        Choice("*", "sms", True),
        Choice("welcome", "*", False),
    }
    text = await get_page(stack, response.headers["Location"])
    assert "Your preferences were saved." in text
    chosen = _select(text, "job_finished.email")
    assert '<option value="off" selected>' in chosen
    # A bad answer: the form again, with the error at its cell, and nothing saved.
    response = await post_form(stack, "/app/preferences", {"job_finished.email": "maybe"})
    text = await page(response, 422)
    assert "choose default, on or off" in _select(text, "job_finished.email", "</td>")
    assert set(subscriptions.list_for_user(stack.db, member.id)) == stored
    # Others' preferences are their own.
    other = get_by_email(stack.db, "other@example.com")
    assert subscriptions.list_for_user(stack.db, other.id) == []


def _select(text: str, name: str, end: str = "</select>") -> str:
    start = text.index(f'name="{name}"')
    return text[start : text.index(end, start)]
