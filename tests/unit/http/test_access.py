"""The role table: every route of the app, and what each kind of caller gets from it.

The table below is the one place a route's access is written down for the tests: a route
missing from it fails, so a new route cannot ship without someone saying who may call it."""

from __future__ import annotations

import pytest

from conveyor.errors import PermissionDeniedError
from conveyor.http.app import route_tables
from conveyor.http.auth import authorize
from conveyor.http.principal import Principal
from conveyor.http.routes import Route
from conveyor.models import Role, Scope, User
from conveyor.services.auth import TokenConfig, issue_token
from conveyor.services.users import create_user, get_by_email
from tests.stack import Stack
from tests.unit.http.walk import routes_of

#: (method, path) -> the least role that may call the route; None: public.
EXPECTED: dict[tuple[str, str], Role | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("GET", "/openapi.json"): None,
    ("GET", "/static/{name}"): None,
    ("GET", "/.well-known/jwks.json"): None,
    ("GET", "/admin/"): Role.OPERATOR,
    ("GET", "/admin/overview/live"): Role.OPERATOR,
    ("GET", "/admin/queues"): Role.OPERATOR,
    ("GET", "/admin/queues/live"): Role.OPERATOR,
    ("GET", "/admin/queues/{queue}/purge"): Role.OPERATOR,
    ("POST", "/admin/queues/{queue}/purge"): Role.OPERATOR,
    ("GET", "/admin/queues/{queue}/pause"): Role.OPERATOR,
    ("POST", "/admin/queues/{queue}/pause"): Role.OPERATOR,
    ("POST", "/admin/queues/{queue}/resume"): Role.OPERATOR,
    ("GET", "/admin/workers"): Role.OPERATOR,
    ("GET", "/admin/workers/live"): Role.OPERATOR,
    ("GET", "/admin/notifications"): Role.OPERATOR,
    ("GET", "/admin/reports"): Role.OPERATOR,
    ("GET", "/admin/schedules"): Role.OPERATOR,
    ("GET", "/admin/workflows"): Role.OPERATOR,
    ("GET", "/admin/jobs"): Role.OPERATOR,
    ("GET", "/admin/jobs/{job_id}"): Role.OPERATOR,
    ("GET", "/admin/jobs/{job_id}/live"): Role.OPERATOR,
    ("POST", "/admin/jobs/{job_id}/retry"): Role.OPERATOR,
    ("POST", "/admin/jobs/{job_id}/cancel"): Role.OPERATOR,
    ("GET", "/admin/errors"): Role.OPERATOR,
    ("GET", "/admin/errors/group"): Role.OPERATOR,
    ("POST", "/admin/errors/group/retry"): Role.OPERATOR,
    ("GET", "/admin/errors/group/discard"): Role.OPERATOR,
    ("POST", "/admin/errors/group/discard"): Role.OPERATOR,
    ("GET", "/admin/audit"): Role.ADMIN,
    ("GET", "/admin/users"): Role.ADMIN,
    ("GET", "/admin/users/{user_id}"): Role.ADMIN,
    ("POST", "/admin/users/{user_id}/role"): Role.ADMIN,
    ("POST", "/admin/users/{user_id}/active"): Role.ADMIN,
    ("POST", "/admin/users/{user_id}/sign-out"): Role.ADMIN,
    ("GET", "/app/"): Role.MEMBER,
    ("GET", "/app/login"): None,
    ("POST", "/app/login"): None,
    ("GET", "/app/login/mfa"): None,
    ("POST", "/app/login/mfa"): None,
    ("GET", "/app/login/link"): None,
    ("POST", "/app/login/link"): None,
    ("POST", "/app/logout"): Role.MEMBER,
    ("GET", "/app/jobs/live"): Role.MEMBER,
    ("GET", "/app/jobs/new"): Role.MEMBER,
    ("POST", "/app/jobs/new"): Role.MEMBER,
    ("GET", "/app/jobs/{job_id}"): Role.MEMBER,
    ("GET", "/app/jobs/{job_id}/live"): Role.MEMBER,
    ("POST", "/app/jobs/{job_id}/cancel"): Role.MEMBER,
    ("POST", "/app/jobs/{job_id}/retry"): Role.MEMBER,
    ("GET", "/app/preferences"): Role.MEMBER,
    ("POST", "/app/preferences"): Role.MEMBER,
    ("POST", "/v1/jobs"): Role.MEMBER,
    ("GET", "/v1/jobs"): Role.MEMBER,
    ("GET", "/v1/jobs/{job_id}"): Role.MEMBER,
    ("POST", "/v1/jobs/{job_id}/cancel"): Role.MEMBER,
    ("POST", "/v1/jobs/{job_id}/retry"): Role.MEMBER,
    ("GET", "/v1/jobs/{job_id}/events"): Role.MEMBER,
    ("GET", "/v1/job-types"): Role.MEMBER,
    ("POST", "/v1/jobs/cancel"): Role.OPERATOR,
    ("POST", "/v1/jobs/retry"): Role.OPERATOR,
    ("POST", "/v1/queues/{queue}/purge"): Role.OPERATOR,
    ("GET", "/v1/errors"): Role.OPERATOR,
    ("POST", "/v1/errors/retry"): Role.OPERATOR,
    ("POST", "/v1/errors/discard"): Role.OPERATOR,
    ("GET", "/v1/queues"): Role.OPERATOR,
    ("POST", "/v1/queues/{queue}/pause"): Role.OPERATOR,
    ("POST", "/v1/queues/{queue}/resume"): Role.OPERATOR,
    ("POST", "/v1/notifications"): Role.MEMBER,
    ("GET", "/v1/notifications/{notification_id}"): Role.MEMBER,
    ("POST", "/v1/notifications/preview"): Role.MEMBER,
    ("GET", "/v1/deliveries"): Role.MEMBER,
    ("GET", "/v1/bounces"): Role.OPERATOR,
    ("DELETE", "/v1/bounces/{bounce_id}"): Role.OPERATOR,
    ("GET", "/v1/me/subscriptions"): Role.MEMBER,
    ("PUT", "/v1/me/subscriptions"): Role.MEMBER,
    ("GET", "/v1/me/webhook-key"): Role.MEMBER,
    ("GET", "/v1/unsubscribe"): None,
    ("POST", "/v1/unsubscribe"): None,
    ("POST", "/v1/auth/refresh"): None,
    ("POST", "/v1/auth/logout"): Role.MEMBER,
    ("GET", "/v1/me/sessions"): Role.MEMBER,
    ("DELETE", "/v1/me/sessions"): Role.MEMBER,
    ("DELETE", "/v1/me/sessions/{session_id}"): Role.MEMBER,
    ("GET", "/v1/users"): Role.ADMIN,
    ("GET", "/v1/users/{user_id}"): Role.ADMIN,
    ("PATCH", "/v1/users/{user_id}"): Role.ADMIN,
    ("GET", "/v1/audit-events"): Role.ADMIN,
    ("POST", "/v1/auth/login/mfa"): None,
    ("POST", "/v1/me/mfa/totp"): Role.MEMBER,
    ("POST", "/v1/me/mfa/totp/confirm"): Role.MEMBER,
    ("DELETE", "/v1/me/mfa"): Role.MEMBER,
    ("POST", "/v1/me/mfa/recovery-codes"): Role.MEMBER,
    ("POST", "/v1/me/api-keys"): Role.MEMBER,
    ("GET", "/v1/me/api-keys"): Role.MEMBER,
    ("DELETE", "/v1/me/api-keys/{key_id}"): Role.MEMBER,
    ("POST", "/v1/auth/register"): None,
    ("POST", "/v1/auth/verify-email"): None,
    ("POST", "/v1/auth/verify-email/resend"): None,
    ("POST", "/v1/auth/login"): None,
    ("POST", "/v1/auth/password-reset"): None,
    ("POST", "/v1/auth/password-reset/confirm"): None,
    ("GET", "/v1/me"): Role.MEMBER,
    ("PATCH", "/v1/me"): Role.MEMBER,
    ("POST", "/v1/me/password"): Role.MEMBER,
    ("GET", "/v1/auth/oidc/providers"): None,
    ("GET", "/v1/auth/oidc/{provider}/start"): None,
    ("GET", "/v1/auth/oidc/{provider}/callback"): None,
    ("POST", "/v1/auth/oidc/exchange"): None,
}


#: The pages' prefixes: their GETs send a browser without a session to the sign-in form.
PAGES = ("/admin/", "/app/")

#: Public forms that a browser may post only with the double-submit token of their page.
SIGN_IN_FORMS = {("POST", "/app/login"), ("POST", "/app/login/mfa"), ("POST", "/app/login/link")}

#: Routes that refuse (403) a user acting below their role for want of a second factor, though
#: their least role is member: what they make would act with the user's full role.
STRONG_ONLY = {("POST", "/v1/me/api-keys")}

#: Routes that refuse (403, "sign in again") an account without a password whose token is of
#: no recent sign-in, as the tokens here are: the role let the request through.
FRESH_SIGN_IN = {
    ("POST", "/v1/me/mfa/totp"),
    ("DELETE", "/v1/me/mfa"),
    ("POST", "/v1/me/mfa/recovery-codes"),
}


def _tokens(stack: Stack) -> dict[str, tuple[str, Role]]:
    """Each kind of caller's token, and the role it acts with."""
    config = TokenConfig.of(stack.settings)
    operator = create_user(stack.db, "operator@example.com", Role.OPERATOR)
    admin = get_by_email(stack.db, "admin@example.com")
    return {
        "member": (stack.member_token, Role.MEMBER),
        "operator": (issue_token(config, operator.id), Role.OPERATOR),
        # A CLI-issued token counts as a second factor (amr `cli`).
        "admin with MFA": (stack.admin_token, Role.ADMIN),
        # An admin who signed in with a password only acts as a member.
        "admin without MFA": (issue_token(config, admin.id, amr=("pwd",)), Role.MEMBER),
    }


async def test_every_route_answers_each_role_as_the_table_says(embedded_stack: Stack) -> None:
    stack = embedded_stack
    tokens = _tokens(stack)
    found = routes_of(stack.client.app)
    assert len(found) > 20
    for route in found:
        method = "GET" if route.method == "HEAD" else route.method
        key = (method, route.path)
        assert route.spec is not None, f"{key} is in no route table"
        assert key in EXPECTED, f"declare the new route's access here: {key}"
        least = EXPECTED[key]
        assert route.spec.role == least, key
        url = route.url()
        anonymous = await stack.client.request(route.method, url, allow_redirects=False)
        if least is None:
            if key in SIGN_IN_FORMS:  # refused for want of the form's token, not a sign-in
                assert anonymous.status == 403, key
                continue
            assert anonymous.status not in (401, 403), key
            continue
        if method == "GET" and key[1].startswith(PAGES):  # a page sends to its sign-in form
            assert anonymous.status == 303, key
            assert anonymous.headers["Location"].startswith("/app/login?next="), key
        else:
            assert anonymous.status == 401, key
        for who, (token, acts_as) in tokens.items():
            response = await stack.client.request(route.method, url, headers=stack.headers(token))
            if who == "admin without MFA" and key in STRONG_ONLY:
                assert response.status == 403, (key, who, response.status)
            elif acts_as.at_least(least) and key in FRESH_SIGN_IN and response.status == 403:
                assert "sign in again" in (await response.json())["detail"], (key, who)
            elif acts_as.at_least(least):
                assert response.status not in (401, 403), (key, who, response.status)
            else:
                assert response.status == 403, (key, who, response.status)


async def test_the_table_names_no_route_the_app_lacks(embedded_stack: Stack) -> None:
    found = {
        ("GET" if f.method == "HEAD" else f.method, f.path)
        for f in routes_of(embedded_stack.client.app)
    }
    assert set(EXPECTED) - found == set()


def _declared() -> list[tuple[str, Route]]:
    return [
        (f"{route.method} {prefix}{route.path}", route)
        for prefix, table in route_tables().items()
        for route in table
        if not route.public
    ]


@pytest.mark.parametrize(("where", "route"), _declared())
def test_an_api_key_needs_the_route_s_scope(where: str, route: Route) -> None:
    admin = User(email="admin@example.com", role=Role.ADMIN.value, active=True)
    every_scope = frozenset(Scope)
    with pytest.raises(PermissionDeniedError):
        authorize(Principal(admin, Role.ADMIN, scopes=frozenset()), route)
    if route.scope is None:  # the account's own security: never with an API key
        with pytest.raises(PermissionDeniedError):
            authorize(Principal(admin, Role.ADMIN, scopes=every_scope), route)
        return
    assert route.scope in every_scope, where
    authorize(Principal(admin, Role.ADMIN, scopes=frozenset({route.scope})), route)
    with pytest.raises(PermissionDeniedError):
        authorize(Principal(admin, Role.ADMIN, scopes=every_scope - {route.scope}), route)


def test_an_api_key_cannot_go_beyond_its_owner_s_role() -> None:
    member = User(email="member@example.com", role=Role.MEMBER.value, active=True)
    users_route = next(r for r in route_tables()["/v1"] if r.path == "/users")
    with pytest.raises(PermissionDeniedError):
        authorize(Principal(member, Role.MEMBER, scopes=frozenset(Scope)), users_route)
