"""No member reaches another member's things by their id: every route with an id in its path
answers 404 to a member who does not own it (not 403, which would say that it exists), and
not to the member who does."""

from __future__ import annotations

from conveyor.http.routes import HTML
from conveyor.models import Role
from conveyor.services.users import get_by_email
from tests.stack import Stack
from tests.unit.http.test_errors import problem
from tests.unit.http.test_sessions import sign_in
from tests.unit.http.walk import routes_of

#: Routes with an id in the path that no member may call at all (the role table's test
#: checks their 403): operators' and admins' routes, on everyone's things by design.
NOT_FOR_MEMBERS = {
    ("GET", "/admin/queues/{queue}/purge"),
    ("POST", "/admin/queues/{queue}/purge"),
    ("GET", "/admin/queues/{queue}/pause"),
    ("POST", "/admin/queues/{queue}/pause"),
    ("POST", "/admin/queues/{queue}/resume"),
    ("GET", "/admin/jobs/{job_id}"),
    ("GET", "/admin/jobs/{job_id}/live"),
    ("POST", "/admin/jobs/{job_id}/retry"),
    ("POST", "/admin/jobs/{job_id}/cancel"),
    ("DELETE", "/v1/bounces/{bounce_id}"),
    ("POST", "/v1/queues/{queue}/purge"),
    ("POST", "/v1/queues/{queue}/pause"),
    ("POST", "/v1/queues/{queue}/resume"),
    ("GET", "/v1/users/{user_id}"),
    ("PATCH", "/v1/users/{user_id}"),
    ("GET", "/admin/users/{user_id}"),
    ("POST", "/admin/users/{user_id}/role"),
    ("POST", "/admin/users/{user_id}/active"),
    ("POST", "/admin/users/{user_id}/sign-out"),
}

#: The order the owner calls the routes in: a thing is ended only after it was read.
LAST = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def _owned(stack: Stack) -> dict[str, str]:
    """Ids of things the member owns, by path parameter name."""
    member = get_by_email(stack.db, "member@example.com")
    job = await stack.submit("system.echo", {})
    response = await stack.client.post(
        "/v1/notifications",
        json={"kind": "welcome", "recipients": [{"user_id": str(member.id)}]},
        headers=stack.headers(),
    )
    notification = await response.json()
    assert response.status == 202, notification
    response = await stack.client.post(
        "/v1/me/api-keys", json={"name": "ci", "scopes": ["jobs:read"]}, headers=stack.headers()
    )
    key = await response.json()
    assert response.status == 201, key
    return {
        "key_id": key["id"],
        "job_id": job["id"],
        "notification_id": notification["id"],
        "session_id": str(sign_in(stack).session_id),
    }


async def test_no_member_reaches_another_member_s_things_by_id(embedded_stack: Stack) -> None:
    stack = embedded_stack
    owned = await _owned(stack)
    checked: dict[tuple[str, str], str] = {}
    for route in routes_of(stack.client.app):
        method = "GET" if route.method == "HEAD" else route.method
        key = (method, route.path)
        names = [p.name for p in route.spec.parameters if p.where == "path"] if route.spec else []
        public = route.spec is not None and route.spec.public
        if not names or public or key in NOT_FOR_MEMBERS or key in checked:
            continue
        assert route.spec is not None and route.spec.role == Role.MEMBER, key
        missing = [name for name in names if name not in owned]
        assert not missing, f"cover {key} here: make a thing of the member's for {missing}"
        url = route.path.format(**owned)
        response = await stack.client.request(method, url, headers=stack.headers(stack.other_token))
        if route.table is not None and route.table.error_type == HTML:  # a page: an HTML 404
            assert response.status == 404, (key, await response.text())
            assert response.headers["Content-Type"].startswith("text/html"), key
        else:
            await problem(response, 404)
        checked[key] = url
    # The control: the owner reaches each (reads first, what may end a thing last), so a
    # route answering 404 to everyone fails here.
    for (method, path), url in sorted(checked.items(), key=lambda item: LAST.index(item[0][0])):
        response = await stack.client.request(method, url, headers=stack.headers())
        assert response.status not in (404, 500), (method, path, await response.text())
    assert ("GET", "/v1/jobs/{job_id}") in checked
    assert ("POST", "/app/jobs/{job_id}/cancel") in checked
    assert ("DELETE", "/v1/me/sessions/{session_id}") in checked
    assert ("DELETE", "/v1/me/api-keys/{key_id}") in checked


async def test_no_member_lists_another_member_s_children_or_deliveries(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    owned = await _owned(stack)
    listings = [
        ("/v1/jobs", {"parent": owned["job_id"]}, 0),  # the member's job has no children
        ("/v1/deliveries", {"notification_id": owned["notification_id"]}, 1),
        ("/v1/me/sessions", {}, 1),
        ("/v1/me/api-keys", {}, 1),
    ]
    for path, query, _ in listings:
        response = await stack.client.get(
            path, params=query, headers=stack.headers(stack.other_token)
        )
        body = await response.json()
        if response.status == 200:
            assert body["items"] == [], path
        else:
            await problem(response, 404)
    # The control: the owner still sees their own.
    for path, query, least in listings:
        response = await stack.client.get(path, params=query, headers=stack.headers())
        body = await response.json()
        assert response.status == 200, (path, body)
        assert len(body["items"]) >= least, (path, body)
