"""A whole Conveyor in the test process: web app, sweeper, a real Dramatiq worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from aiohttp.test_utils import TestClient
from sqlalchemy.orm import Session, sessionmaker

from conveyor import bootstrap
from conveyor.announcements import Announcements
from conveyor.models import Job, Role
from conveyor.services.auth import TokenConfig, issue_token
from conveyor.services.users import create_user
from conveyor.settings import Settings
from conveyor.workers.lifecycle import JobLifecycle, install_lifecycle

FAST = {
    "secret_key": "test-secret-key-that-is-long-enough-for-hs256",
    "lease_seconds": 2.0,
    "sweep_interval_seconds": 0.2,
    "publish_grace_seconds": 0.5,
    "db_pool_size": 5,
    "log_level": "INFO",
    # Several runs share the machine: a pool serves metrics only where a test gives it a port.
    "worker_metrics_ports": "",
}


def test_settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **{**FAST, **overrides})  # type: ignore[call-arg]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class Stack:
    settings: Settings
    db: sessionmaker[Session]
    broker: dramatiq.Broker
    client: TestClient  # type: ignore[type-arg]
    admin_token: str
    member_token: str
    other_token: str
    container: bootstrap.Container
    lifecycle: JobLifecycle
    worker: dramatiq.Worker | None = None

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.member_token}", **extra}

    async def submit(
        self,
        type_: str,
        payload: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        expect: int = 202,
        **headers: str,
    ) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/jobs",
            json={"type": type_, "payload": payload or {}},
            headers=self.headers(token, **headers),
        )
        body = await response.json()
        assert response.status == expect, body
        return body  # type: ignore[no-any-return]

    async def get(self, job_id: str, *, token: str | None = None, **query: Any) -> dict[str, Any]:
        response = await self.client.get(
            f"/v1/jobs/{job_id}", params=query, headers=self.headers(token)
        )
        body = await response.json()
        assert response.status == 200, body
        return body  # type: ignore[no-any-return]

    async def wait_for(
        self, job_id: str, *statuses: str, within: float = 20.0, token: str | None = None
    ) -> dict[str, Any]:
        """Long-poll until the job reaches one of `statuses`."""
        deadline = asyncio.get_running_loop().time() + within
        job = await self.get(job_id, token=token)
        while job["status"] not in statuses:
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"job {job_id} is {job['status']}, not {statuses}"
            job = await self.get(job_id, token=token, wait=f"{min(remaining, 5):.2f}")
        return job

    def row(self, job_id: str) -> Job:
        with self.db() as session:
            job = session.get(Job, uuid.UUID(job_id))
            assert job is not None
            return job

    def start_worker(self, threads: int = 4) -> None:
        assert self.worker is None
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=50)
        self.worker.start()

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None


def build_container(
    settings: Settings, db: sessionmaker[Session], announcements: Announcements
) -> tuple[bootstrap.Container, JobLifecycle]:
    """Web and worker in one process (as `conveyor dev`), on the given database and
    announcements, with the broker the settings name; every job type is served."""
    import conveyor.actors.all  # noqa: F401

    container = bootstrap.Container(
        settings, bootstrap.ProcessRole.DEV, db=db, announcements=announcements
    )
    return container, install_lifecycle(container.broker, container)


def make_users(settings: Settings, db: sessionmaker[Session]) -> tuple[str, str, str]:
    tokens = TokenConfig.of(settings)
    admin = create_user(db, "admin@example.com", Role.ADMIN)
    member = create_user(db, "member@example.com", Role.MEMBER)
    other = create_user(db, "other@example.com", Role.MEMBER)
    return tuple(issue_token(tokens, u.id) for u in (admin, member, other))  # type: ignore[return-value]
