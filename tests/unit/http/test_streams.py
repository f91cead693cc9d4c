"""Many event streams and waiting requests on one job: the web process reads each change once
and fans it out; a user's open streams are capped; closed streams leave nothing behind."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from conveyor import bootstrap
from conveyor.announcements import MemoryAnnouncements
from conveyor.http.app import create_app
from conveyor.models import Job, JobStatus, User
from conveyor.services import runs
from conveyor.services.auth import TokenConfig, issue_token
from conveyor.settings import Settings
from tests.stack import test_settings as make_settings
from tests.stack import wait_until
from tests.unit.http.test_errors import problem

STREAMS = 20
WAITERS = 20
PROGRESS = 10


class Stream:
    """A server-sent event stream, read event by event as it arrives."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response

    async def next(self) -> tuple[str, dict[str, Any]] | None:
        """The next event as (kind, data); None once the stream has ended."""
        fields: dict[str, str] = {}
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), 10)).decode()
            if not line:
                return None
            line = line.rstrip("\n")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
            elif "data" in fields:
                return fields["event"], json.loads(fields["data"])

    async def statuses_until(self, status: str) -> list[str]:
        seen: list[str] = []
        while status not in seen:
            got = await self.next()
            assert got is not None, f"the stream ended before {status}: {seen}"
            if got[0] == "status":
                seen.append(got[1]["status"])
        return seen


@dataclass
class Web:
    """The web app on SQLite and in-process announcements, with no worker: the test moves
    the job itself, and counts the SELECT statements of each table."""

    client: TestClient  # type: ignore[type-arg]
    db: sessionmaker[Session]
    container: bootstrap.Container
    announcements: MemoryAnnouncements
    tokens: dict[str, str]
    reads: Counter[str] = field(default_factory=Counter)

    def headers(self, who: str = "member") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def open_stream(self, job: Job, who: str = "member") -> Stream:
        response = await self.client.get(f"/v1/jobs/{job.id}/events", headers=self.headers(who))
        assert response.status == 200, await response.text()
        return Stream(response)

    async def get(self, job: Job, **query: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/jobs/{job.id}", params=query, headers=self.headers())
        body = await response.json()
        assert response.status == 200, body
        return body  # type: ignore[no-any-return]

    async def progress(self, job: Job, fraction: float) -> None:
        await asyncio.to_thread(runs.report_progress, self.db, job.id, 1, fraction, None)
        self.announcements.announce(job.id, JobStatus.RUNNING)

    async def finish(self, job: Job) -> None:
        await asyncio.to_thread(runs.finish, self.db, job.id, 1, JobStatus.SUCCEEDED, result={})
        self.announcements.announce(job.id, JobStatus.SUCCEEDED)


def _count_selects(engine: Engine, reads: Counter[str]) -> None:
    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            for table in ("job_events", "jobs", "users"):
                if f"FROM {table}" in statement:
                    reads[table] += 1
                    break

    event.listen(engine, "before_cursor_execute", before)


async def _web(
    aiohttp_client: Callable[..., Any],
    db: sessionmaker[Session],
    sqlite_url: str,
    users: dict[str, User],
    settings: Settings,
) -> AsyncIterator[Web]:
    announcements = MemoryAnnouncements()
    container = bootstrap.Container(
        settings, bootstrap.ProcessRole.WEB, db=db, announcements=announcements
    )
    config = TokenConfig.of(settings)
    tokens = {name: issue_token(config, user.id) for name, user in users.items()}
    try:
        client = await aiohttp_client(create_app(container, sweeper=False))
        web = Web(client, db, container, announcements, tokens)
        _count_selects(db.kw["bind"], web.reads)
        yield web
    finally:
        container.close()


@pytest.fixture
async def web(
    aiohttp_client: Callable[..., Any],
    db: sessionmaker[Session],
    sqlite_url: str,
    member: User,
    other: User,
) -> AsyncIterator[Web]:
    settings = make_settings(database_url=sqlite_url, broker_url="stub://", redis_url=None)
    users = {"member": member, "other": other}
    async for w in _web(aiohttp_client, db, sqlite_url, users, settings):
        yield w


@pytest.fixture
async def capped_web(
    aiohttp_client: Callable[..., Any],
    db: sessionmaker[Session],
    sqlite_url: str,
    member: User,
    other: User,
) -> AsyncIterator[Web]:
    settings = make_settings(
        database_url=sqlite_url, broker_url="stub://", redis_url=None, max_streams_per_user=2
    )
    users = {"member": member, "other": other}
    async for w in _web(aiohttp_client, db, sqlite_url, users, settings):
        yield w


@pytest.fixture
def running_job(make_job: Callable[..., Job], db: sessionmaker[Session]) -> Job:
    """A job of the member's, claimed by a (pretend) worker: attempt 1 is running."""
    job = make_job(job_type="system.sleep", payload={"seconds": 1})
    claimed = runs.claim(db, job.id, worker="test-worker", lease=dt.timedelta(minutes=5))
    assert claimed is not None and claimed.attempts == 1
    return job


# --- reads per event --------------------------------------------------------------------------


async def test_each_event_is_read_once_however_many_streams_are_open(
    web: Web, running_job: Job
) -> None:
    streams = [await web.open_stream(running_job) for _ in range(STREAMS)]
    for stream in streams:
        assert await stream.statuses_until("running") == ["queued", "running"]
    web.reads.clear()

    for step in range(1, PROGRESS + 1):
        await web.progress(running_job, step / PROGRESS)
        for stream in streams:
            got = await stream.next()
            assert got is not None
            assert (got[0], got[1]["progress"]) == ("progress", step / PROGRESS)
    # One read per event (or fewer, when events come faster than a read), not one per stream.
    assert web.reads["job_events"] <= PROGRESS, web.reads
    assert web.reads["jobs"] == 0, web.reads

    await web.finish(running_job)
    for stream in streams:
        assert await stream.statuses_until("succeeded") == ["succeeded"]
        assert await stream.next() is None  # and the stream ends
    assert web.reads["job_events"] <= PROGRESS + 1, web.reads


async def test_requests_waiting_on_one_job_share_the_reads_of_its_row(
    web: Web, running_job: Job
) -> None:
    web.reads.clear()
    waiting = [
        asyncio.create_task(web.get(running_job, wait="10", until="finished"))
        for _ in range(WAITERS)
    ]
    # Each request reads the job once to check the caller may see it.
    await asyncio.to_thread(wait_until, lambda: web.reads["jobs"] >= WAITERS, 10)
    await web.finish(running_job)
    answers = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert {answer["status"] for answer in answers} == {"succeeded"}
    # Beyond those, a few shared reads: not one per request after subscribing, and one
    # more per request when the job finished.
    assert web.reads["jobs"] <= WAITERS + WAITERS // 2, web.reads


async def test_a_stream_that_falls_behind_gets_every_event_from_the_database(
    web: Web, running_job: Job
) -> None:
    slow = await web.open_stream(running_job)
    fast = await web.open_stream(running_job)
    assert await fast.statuses_until("running") == ["queued", "running"]
    for step in range(1, 31):  # while `slow` reads nothing
        await web.progress(running_job, step / 100)
        got = await fast.next()
        assert got is not None and got[1]["progress"] == step / 100
    await web.finish(running_job)
    assert await fast.statuses_until("succeeded") == ["succeeded"]

    kinds = []
    while (got := await slow.next()) is not None:
        kinds.append(got[1]["status"] if got[0] == "status" else got[1]["progress"])
    assert kinds == ["queued", "running", *(step / 100 for step in range(1, 31)), "succeeded"]


# --- the cap on open streams ------------------------------------------------------------------


async def test_a_user_past_the_stream_cap_gets_429_with_retry_after_until_one_closes(
    capped_web: Web, running_job: Job, make_job: Callable[..., Job], other: User
) -> None:
    web = capped_web
    first = await web.open_stream(running_job)
    second = await web.open_stream(running_job)
    for stream in (first, second):
        await stream.statuses_until("running")

    refused = await web.client.get(f"/v1/jobs/{running_job.id}/events", headers=web.headers())
    body = await problem(refused, 429)
    assert int(refused.headers["Retry-After"]) > 0
    assert "2 open event streams" in body["detail"]
    assert [error["field"] for error in body["errors"]] == ["Authorization"]

    others = make_job(other)  # another user has a cap of their own
    await (await web.open_stream(others, "other")).statuses_until("queued")

    first.response.close()
    await web.progress(running_job, 0.5)  # its handler notices the closed connection
    assert await second.next() is not None
    feeds = web.container.feeds
    await asyncio.to_thread(wait_until, lambda: feeds.open_streams(running_job.owner_id) == 1, 10)
    await (await web.open_stream(running_job)).statuses_until("running")


# --- releasing what closed streams held -------------------------------------------------------


async def test_closed_streams_leave_nothing_behind(web: Web, running_job: Job) -> None:
    streams = [await web.open_stream(running_job) for _ in range(STREAMS)]
    for stream in streams:
        await stream.statuses_until("running")
    feeds = web.container.feeds
    feed = weakref.ref(feeds.feed(running_job.id))
    assert feed() is not None
    assert feeds.open_streams(running_job.owner_id) == STREAMS

    for stream in streams:
        stream.response.close()
    await web.progress(running_job, 0.5)  # their handlers notice the closed connections

    def released() -> bool:
        return (
            len(feeds) == 0
            and feeds.open_streams(running_job.owner_id) == 0
            and web.announcements.listening == 0
        )

    await asyncio.to_thread(wait_until, released, 10)
    gc.collect()
    assert feed() is None


# --- stopping ---------------------------------------------------------------------------------


async def test_a_stopping_web_process_ends_its_open_streams_at_once(
    web: Web, running_job: Job
) -> None:
    streams = [await web.open_stream(running_job) for _ in range(3)]
    for stream in streams:
        assert await stream.statuses_until("running") == ["queued", "running"]

    # What aiohttp's runner does first when the process stops: the app's on_shutdown signal.
    await asyncio.wait_for(web.client.app.shutdown(), 2)
    for stream in streams:
        assert await asyncio.wait_for(stream.next(), 2) is None  # ended, not cut by a timeout
    wait_until(
        lambda: (
            not web.container.feeds and web.container.feeds.open_streams(running_job.owner_id) == 0
        ),
        timeout=5,
    )
