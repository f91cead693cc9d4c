"""E2E fixtures: the processes a test starts (stopped after it, their output shown when it
fails), the environment of the production processes, and an API token."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pika
import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import REDIS_URL
from tests.e2e.processes import FAST, Processes, environment, run_cli

E2E_QUEUES = ("system", "system.DQ", "system.XQ")


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
    run_cli("users", "create", "e2e@example.com", env=platform_env, cwd=tmp_path)
    return run_cli("tokens", "issue", "e2e@example.com", env=platform_env, cwd=tmp_path).strip()
