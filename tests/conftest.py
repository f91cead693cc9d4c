"""Fixtures: a private database, RabbitMQ vhost and Redis prefix per run; whole stacks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from conveyor.announcements import MemoryAnnouncements, RedisAnnouncements
from conveyor.db import make_engine, make_sessionmaker
from conveyor.http.app import create_app
from conveyor.models.migrate import upgrade
from tests.services import unreachable
from tests.stack import Stack, build_container, make_users, test_settings

os.environ.setdefault("CONVEYOR_LOG_LEVEL", "INFO")

RUN_ID = uuid.uuid4().hex[:10]
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """Whatever a test (or the command it runs in-process) does to the process's logging,
    the next test starts from the same: a handler bound to a test's captured stderr would
    write to a closed file later."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = sys.excepthook, threading.excepthook
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.excepthook, threading.excepthook = hooks
        logging.captureWarnings(False)


@pytest.fixture(scope="session")
def services() -> None:
    problems = unreachable()
    if problems:
        pytest.exit("services are down:\n" + "\n".join(problems), returncode=1)


@pytest.fixture(scope="session")
def database_url(services: None) -> Iterator[str]:
    """A fresh PostgreSQL database for this run, migrated; dropped at the end."""
    name = f"conveyor_test_{RUN_ID}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    yield url
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def rabbitmq_url(services: None) -> Iterator[str]:
    """A private RabbitMQ vhost for this run; deleted at the end."""
    vhost = f"conveyor-test-{RUN_ID}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"
    _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def redis_prefix(services: None) -> Iterator[str]:
    """A key prefix of this run (broker namespace and event channels); keys removed after."""
    prefix = f"conveyor-test-{RUN_ID}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def pg_db(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the run's database, emptied before each test."""
    engine = make_engine(database_url, pool_size=10)
    with engine.begin() as connection:
        connection.execute(
            text("TRUNCATE job_events, jobs, users, workers, audit_events, queue_pauses CASCADE")
        )
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'conveyor.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["rabbitmq", "redis"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def stack_settings() -> dict[str, Any]:
    """Settings of the `stack` and `embedded_stack` fixtures beyond the tests' defaults; a
    test module overrides this fixture to change them (to allow a local server, say)."""
    return {}


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest,
    broker_kind: str,
    aiohttp_client,
    pg_db,
    database_url,  # type: ignore[no-untyped-def]
    redis_prefix,
    stack_settings: dict[str, Any],
) -> AsyncIterator[Stack]:
    """Web app (with sweeper) and an in-process Dramatiq worker on real PostgreSQL,
    Redis events, and RabbitMQ or Redis as the broker."""
    broker_url = request.getfixturevalue("rabbitmq_url") if broker_kind == "rabbitmq" else REDIS_URL
    settings = test_settings(
        **stack_settings,
        database_url=database_url,
        broker_url=broker_url,
        broker_namespace=redis_prefix,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
    )
    announcements = RedisAnnouncements(REDIS_URL, redis_prefix)
    try:
        async for s in _stack(settings, pg_db, announcements, aiohttp_client):
            yield s
    finally:
        announcements.close()


@pytest.fixture
async def embedded_stack(  # type: ignore[no-untyped-def]
    aiohttp_client, sqlite_url: str, stack_settings: dict[str, Any]
) -> AsyncIterator[Stack]:
    """The embedded configuration: SQLite, stub broker, in-process events."""
    settings = test_settings(
        **stack_settings, database_url=sqlite_url, broker_url="stub://", redis_url=None
    )
    engine = make_engine(sqlite_url, pool_size=10)
    db = make_sessionmaker(engine)
    async for s in _stack(settings, db, MemoryAnnouncements(), aiohttp_client):
        yield s
    engine.dispose()


async def _stack(settings, db, announcements, aiohttp_client) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    container, lifecycle = build_container(settings, db, announcements)
    admin, member, other = make_users(settings, db)
    try:
        client = await aiohttp_client(create_app(container))
        s = Stack(
            settings, db, container.broker, client, admin, member, other, container, lifecycle
        )
        s.start_worker()
        try:
            yield s
        finally:
            s.stop_worker()
            container.broker.flush_all()
    finally:
        container.close()
