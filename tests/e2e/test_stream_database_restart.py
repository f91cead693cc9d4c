"""An event stream rides out a database restart: a client that reads to the end sees every
event of the job, the final status last."""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from conveyor.db import make_engine, make_sessionmaker
from conveyor.models import JobEvent
from tests.e2e.conftest import member_token, private_platform_env
from tests.e2e.processes import Processes
from tests.servers import PrivatePostgres, PrivateRedis
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

PREFIX = "conveyor-e2e"
FINAL = {"succeeded", "failed", "cancelled"}


class StreamReader(threading.Thread):
    """Reads a server-sent event stream to its end, as `curl -N` would."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with urllib.request.urlopen(self.request, timeout=60) as response:
                fields: dict[str, str] = {}
                for raw in response:
                    line = raw.decode().rstrip("\n")
                    if line:
                        if not line.startswith(":"):
                            name, _, value = line.partition(":")
                            fields[name] = value.strip()
                    elif "data" in fields:
                        data = json.loads(fields["data"])
                        self.events.append((int(fields["id"]), fields["event"], data))
                        fields = {}
        except BaseException as exc:  # shown by the test
            self.error = exc

    def progress_events(self) -> int:
        return sum(1 for _, kind, _ in self.events if kind == "progress")


def announce(server: PrivateRedis, job_id: str) -> None:
    """Publish a `running` announcement of the job, as its worker does for progress."""
    client = redis.Redis.from_url(server.url)
    try:
        client.publish(f"{PREFIX}:job:{job_id}", json.dumps({"status": "running"}))
    finally:
        client.close()


def test_an_event_stream_rides_out_a_database_restart_and_ends_with_the_final_status(
    private_pg: PrivatePostgres, private_redis: PrivateRedis, procs: Processes, tmp_path: Path
) -> None:
    env = private_platform_env(
        private_pg, broker_url=private_redis.url, redis_url=private_redis.url, prefix=PREFIX
    )
    token = member_token(env, tmp_path)
    web, api = procs.web(env)
    api = api.with_token(token)
    procs.worker(env)
    job = api.submit("system.sleep", {"seconds": 6, "steps": 30})

    reader = StreamReader(f"{api.base_url}/v1/jobs/{job['id']}/events", token)
    reader.start()
    wait_until(lambda: reader.progress_events() >= 3, timeout=20, interval=0.05)
    # A restart that a change announced just before it reaches while the database is down:
    # every connection of the web process is cut, and the stream is woken meanwhile.
    private_pg.stop(mode="fast")
    try:
        announce(private_redis, job["id"])
        web.wait_for_output(r"database unavailable", timeout=10)
    finally:
        private_pg.resume()
    reader.join(timeout=60)
    assert not reader.is_alive(), "the stream did not end"
    assert reader.error is None, reader.error

    final = api.wait_finished(job["id"], within=30)
    last_id, kind, data = reader.events[-1]
    assert (kind, data["status"]) == ("status", final["status"]), reader.events[-3:]
    assert final["status"] in FINAL
    # Every event of the job, once each, in order: none lost or repeated across the restart.
    engine = make_engine(env["CONVEYOR_DATABASE_URL"], pool_size=1)
    try:
        with make_sessionmaker(engine)() as session:
            stored = list(
                session.scalars(
                    select(JobEvent.id)
                    .where(JobEvent.job_id == uuid.UUID(job["id"]))
                    .order_by(JobEvent.id)
                )
            )
    finally:
        engine.dispose()
    assert [event_id for event_id, _, _ in reader.events] == stored
    assert last_id == stored[-1]
