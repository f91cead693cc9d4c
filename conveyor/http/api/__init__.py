"""The /v1 application: jobs, queues, notifications, accounts (sessions, MFA, API keys, OIDC),
users and the audit log, with problem+json errors and bearer auth."""

from __future__ import annotations

from aiohttp import web

from conveyor.http.api import (  # noqa: F401  (their routes join the table)
    api_keys,
    audit,
    auth,
    errors,
    jobs,
    me,
    mfa,
    notifications,
    oidc,
    operations,
    queues,
    sessions,
    stream,
    users,
)
from conveyor.http.api.params import routes
from conveyor.http.auth import authenticate
from conveyor.http.middleware import problems

__all__ = ["PREFIX", "build_api", "routes"]

PREFIX = "/v1"


def build_api() -> web.Application:
    """The sub-app to mount at /v1; every route but those marked public needs a token."""
    app = web.Application(middlewares=[problems])
    routes.install(app, authenticate)
    return app
