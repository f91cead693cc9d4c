"""Browser test fixtures: one headless Chromium for them all, one server per test module (`conveyor
web`, and the worker pools the module asks for, as real processes on a database, RabbitMQ
vhost and Redis prefix of the module's own), a fresh browser context per test, and users
with passwords."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import psycopg
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import make_engine, make_sessionmaker
from conveyor.models import Role, User
from conveyor.models.migrate import upgrade
from conveyor.security import totp
from conveyor.services.accounts import set_password
from conveyor.services.users import create_user
from tests.conftest import REDIS_URL, RUN_ID
from tests.e2e.browser.browsing import CHROMIUM, CHROMIUM_ARGS, LAPTOP, ROOT, need_browser
from tests.e2e.processes import FAST, Api, Processes, environment

PASSWORD = "correct horse battery staple"
_MODULES = itertools.count(1)
_POSTGRES = "host=127.0.0.1 user=postgres dbname=postgres"


@dataclass
class BrowserServer:
    """`conveyor web` (and pools) of one test module: its URL, environment and database."""

    url: str
    env: dict[str, str]
    db: sessionmaker[Session]
    processes: Processes
    users: dict[str, User] = field(default_factory=dict)

    @property
    def api(self) -> Api:
        return Api(self.url)

    def user(self, email: str, role: Role = Role.MEMBER, password: str = PASSWORD) -> User:
        """A new active user with a verified address and `password`."""
        create_user(self.db, email, role)
        user = set_password(self.db, email, password)
        self.users[email] = user
        return user

    def enable_totp(self, email: str, password: str = PASSWORD) -> str:
        """Turn TOTP on for `email` through the API, as its owner would; the secret."""
        api = self.api_as(email, password)
        status, enrolment = api.request("POST", "/v1/me/mfa/totp", {"password": password})
        assert status == 200, enrolment
        secret: str = enrolment["secret"]
        status, body = api.request(
            "POST", "/v1/me/mfa/totp/confirm", {"code": totp.code_at(secret)}
        )
        assert status == 200, body
        return secret

    def api_as(self, email: str, password: str = PASSWORD) -> Api:
        """The API with a token of `email`, signed in with `password`."""
        status, tokens = self.api.request(
            "POST", "/v1/auth/login", {"email": email, "password": password}
        )
        assert status == 200, tokens
        return self.api.with_token(tokens["access_token"])


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, launched once for all the browser tests. Not once per
    run: Playwright's synchronous API keeps its event loop running in this thread while it
    is open, which the asynchronous tests of the other folders cannot share."""
    need_browser()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server_settings() -> dict[str, str]:
    """CONVEYOR_* settings of the module's server beyond the tests' defaults (override it)."""
    return {}


@pytest.fixture(scope="module")
def pools() -> tuple[str, ...]:
    """The worker pools the module's server runs (override it: `("system",)`)."""
    return ()


@pytest.fixture(scope="module")
def test_jobs() -> bool:
    """Whether the module's server knows the test-only job types of `tests.jobs` (override
    it: `True`); its `system` pool then runs them too."""
    return False


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    services: None,
    rabbitmq_url: str,
    redis_prefix: str,
    server_settings: dict[str, str],
    pools: tuple[str, ...],
    test_jobs: bool,
) -> Iterator[BrowserServer]:
    """The module's own Conveyor: a new migrated database, the run's vhost and a Redis prefix
    of its own; its processes' output is printed if a test of the module failed."""
    number = next(_MODULES)
    name = f"conveyor_browser_{RUN_ID}_{number}"
    with psycopg.connect(_POSTGRES, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(database_url)
    prefix = f"{redis_prefix}-browser-{number}"
    env = environment(
        {
            **FAST,
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_BROKER_URL": rabbitmq_url,
            "CONVEYOR_BROKER_NAMESPACE": prefix,
            "CONVEYOR_REDIS_URL": REDIS_URL,
            "CONVEYOR_REDIS_PREFIX": prefix,
            **server_settings,
            **({"PYTHONPATH": str(ROOT)} if test_jobs else {}),
        }
    )
    engine = make_engine(database_url, pool_size=2)
    processes = Processes(tmp_path_factory.mktemp("browser-server"))
    failed_before = request.session.testsfailed
    try:
        _, api = processes.web(env, preload="tests.jobs" if test_jobs else "")
        for pool in pools:
            testing = test_jobs and pool == "system"
            processes.worker(env, pool, module="tests.e2e.testing_pool" if testing else "")
        yield BrowserServer(api.base_url, env, make_sessionmaker(engine), processes)
    finally:
        processes.stop_all()
        if request.session.testsfailed > failed_before:
            sys.stdout.write(processes.report() + "\n")
        engine.dispose()
        with psycopg.connect(_POSTGRES, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def page(browser: Browser, server: BrowserServer) -> Iterator[Page]:
    """A page in a new browser context (no cookies of another test)."""
    with open_page(browser, server) as opened:
        yield opened


@contextlib.contextmanager
def open_page(browser: Browser, server: BrowserServer) -> Iterator[Page]:
    """A page in a new browser context, at a laptop's size, closed after. The page's own
    Content-Security-Policy stays on; anything it blocks fails the test. A module signs in
    once with it (in a module fixture) and reuses the page in its tests."""
    context = browser.new_context(base_url=server.url, viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(10_000)
    blocked: list[str] = []

    def watch(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            blocked.append(message.text)

    page.on("console", watch)
    try:
        yield page
    finally:
        context.close()
    assert not blocked, "the Content-Security-Policy blocked:\n" + "\n".join(blocked)


def cookies_of(page: Page, url: str) -> Mapping[str, dict[str, object]]:
    """The browser context's cookies for `url`, by name."""
    return {str(c["name"]): dict(c) for c in page.context.cookies(url)}
