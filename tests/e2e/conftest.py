"""E2E fixtures: the processes a test starts (stopped after it, their output shown when it
fails), the environment of the production processes, and an API token."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from pathlib import Path

import pika
import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import make_engine, make_sessionmaker
from conveyor.models.migrate import upgrade
from tests.conftest import REDIS_URL
from tests.e2e.processes import FAST, Processes, environment, run_cli
from tests.servers import PrivatePostgres, PrivateRabbitMQ, PrivateRedis

E2E_QUEUES = tuple(
    f"{pool}{suffix}" for pool in ("system", "notifications") for suffix in ("", ".DQ", ".XQ")
)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    """Start processes through this; all are stopped after the test."""
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()
        failed = any(
            getattr(getattr(request.node, f"report_{when}", None), "failed", False)
            for when in ("setup", "call")
        )
        if failed:
            print(processes.report())


def _delete_queues(rabbitmq_url: str) -> None:
    """Drop the run's job queues, so no message of an earlier test reaches this one."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = connection.channel()
        for queue in E2E_QUEUES:
            channel.queue_delete(queue)
    finally:
        connection.close()


@pytest.fixture
def platform_env(
    pg_db: sessionmaker[Session], database_url: str, rabbitmq_url: str, redis_prefix: str
) -> dict[str, str]:
    """CONVEYOR_* settings of `conveyor web` and the workers: the run's PostgreSQL database
    (emptied), its RabbitMQ vhost (queues dropped) and its Redis prefix."""
    _delete_queues(rabbitmq_url)
    return environment(
        {
            **FAST,
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_BROKER_URL": rabbitmq_url,
            "CONVEYOR_BROKER_NAMESPACE": redis_prefix,
            "CONVEYOR_REDIS_URL": REDIS_URL,
            "CONVEYOR_REDIS_PREFIX": redis_prefix,
        }
    )


@pytest.fixture
def token(platform_env: dict[str, str], tmp_path: Path) -> str:
    """A member's bearer token, made with `conveyor users create` and `conveyor tokens issue`."""
    return member_token(platform_env, tmp_path)


def member_token(env: Mapping[str, str], cwd: Path, email: str = "e2e@example.com") -> str:
    """A new member's bearer token on `env`'s database, made with `conveyor users create` and
    `conveyor tokens issue`."""
    run_cli("users", "create", email, env=env, cwd=cwd)
    return run_cli("tokens", "issue", email, env=env, cwd=cwd).strip()


@pytest.fixture
def env_db(env: dict[str, str]) -> Iterator[sessionmaker[Session]]:
    """Sessions on the database of the test module's `env` fixture (private servers)."""
    engine = make_engine(env["CONVEYOR_DATABASE_URL"], pool_size=2)
    yield make_sessionmaker(engine)
    engine.dispose()


# -- private servers, for the tests that restart or kill one ------------------------------


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own (about a second to start)."""
    with PrivatePostgres() as server:
        yield server


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis server of the test's own, with an append-only file."""
    with PrivateRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="module")
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of the module's own (it takes 10-25 s to boot); tests make a vhost
    each with `private_rabbitmq.add_vhost(name)` and leave it running when they end."""
    with PrivateRabbitMQ() as server:
        yield server


def private_platform_env(
    pg: PrivatePostgres,
    *,
    broker_url: str,
    redis_url: str | None,
    prefix: str = "conveyor-e2e",
    **settings: str,
) -> dict[str, str]:
    """CONVEYOR_* settings of `conveyor web` and the workers on private servers: a migrated
    database `conveyor` on `pg`, the broker at `broker_url`, events on `redis_url`."""
    database_url = pg.url("conveyor")
    upgrade(database_url)
    env = {
        **FAST,
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_BROKER_URL": broker_url,
        "CONVEYOR_BROKER_NAMESPACE": prefix,
        "CONVEYOR_REDIS_PREFIX": prefix,
        **settings,
    }
    if redis_url is not None:
        env["CONVEYOR_REDIS_URL"] = redis_url
    return environment(env)
