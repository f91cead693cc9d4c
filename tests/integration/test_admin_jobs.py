"""The jobs page's search on real PostgreSQL: each filter finds what it should, and the plan of
each reads the index the service's docstring names (on a table where the filtered jobs are
rare, so that the planner prefers an index to scanning)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

import conveyor.actors.all  # noqa: F401  (the job types and their queues)
from conveyor.errors import InvalidRequestError, TransientError
from conveyor.models import Role, User
from conveyor.models.base import utcnow
from conveyor.registry import JOBS
from conveyor.services import admin_jobs
from conveyor.services.admin_jobs import Search
from conveyor.services.operations import JobFilter
from conveyor.services.users import create_user

pytestmark = pytest.mark.integration

N = 20_000
#: Of the N jobs: every 100th (i % 100 == 0) running, of `auth.send_notice` (queue `auth`)
#: and of the member; every 10th failed with an error; the rest succeeded, of `system.echo`.
_SEED = """
INSERT INTO jobs (id, type, queue, status, payload, error, attempts, worker_losses, handbacks,
    max_retries, owner_id, parent_id, cancel_requested, created_at, updated_at)
SELECT
    (lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0') || '7'
        || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
    CASE WHEN i % 100 = 0 THEN 'auth.send_notice' ELSE 'system.echo' END,
    CASE WHEN i % 100 = 0 THEN 'auth' ELSE 'system' END,
    CASE WHEN i % 100 = 0 THEN 'running' WHEN i % 10 = 5 THEN 'failed' ELSE 'succeeded' END,
    '{}'::jsonb,
    CASE WHEN i % 10 = 5 THEN jsonb_build_object('type', 'ValueError', 'message', 'case ' || i)
        END,
    1, 0, 0, 0,
    CASE WHEN i % 100 = 0 THEN :member ELSE :admin END,
    CASE WHEN i % 1000 = 7 THEN :parent END,
    false, created, created
FROM (
    SELECT i, md5(i::text) AS h, now() - interval '1 second' * (:n - i) AS created
    FROM generate_series(1, :n) AS i
) AS numbered
"""


@pytest.fixture
def people(pg_db: sessionmaker[Session]) -> tuple[User, User]:
    return create_user(pg_db, "admin@example.com", Role.ADMIN), create_user(
        pg_db, "member@example.com"
    )


@pytest.fixture
def parent(pg_db: sessionmaker[Session], people: tuple[User, User]) -> uuid.UUID:
    """N jobs (see `_SEED`), some the children of the job returned."""
    admin, member = people
    parent_id = uuid.UUID(int=admin_jobs.id_at(utcnow() - dt.timedelta(days=2)).int | 1)
    with pg_db() as session:
        session.execute(
            text(
                "INSERT INTO jobs (id, type, queue, status, payload, attempts, worker_losses, "
                "handbacks, max_retries, owner_id, cancel_requested, created_at, updated_at) "
                "VALUES (:id, 'system.echo', 'system', 'succeeded', '{}', 1, 0, 0, 0, :owner, "
                "false, now() - interval '2 days', now())"
            ),
            {"id": parent_id, "owner": admin.id},
        )
        session.execute(
            text(_SEED), {"n": N, "admin": admin.id, "member": member.id, "parent": parent_id}
        )
        session.commit()
    with pg_db.kw["bind"].connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE jobs"))
    return parent_id


@contextmanager
def statements(db: sessionmaker[Session]) -> Iterator[list[tuple[str, Any]]]:
    """The SELECTs on jobs run while in the block, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement:
            seen.append((statement, parameters))

    engine = db.kw["bind"]
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _plans(db: sessionmaker[Session], seen: list[tuple[str, Any]]) -> list[str]:
    with db.kw["bind"].connect() as connection:
        return [
            "\n".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {sql}", params))
            for sql, params in seen
        ]


CASES: dict[str, tuple[dict[str, Any], str, int]] = {
    # name: (the search, the index its plan must read, the jobs found on the first page)
    "status": ({"statuses": ("running",)}, "ix_jobs_status_id", 50),
    "type": ({"types": ("auth.send_notice",)}, "ix_jobs_type_id", 50),
    "queue": ({"queues": ("auth",)}, "ix_jobs_type_id", 50),
    "owner": ({"owner": "member"}, "ix_jobs_owner_id_id", 50),
    "parent": ({"parent": True}, "ix_jobs_parent_id", N // 1000),
    "created": ({"first_minute": True}, "pk_jobs", 50),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_filter_is_served_by_an_index(
    case: str, pg_db: sessionmaker[Session], people: tuple[User, User], parent: uuid.UUID
) -> None:
    admin, member = people
    given, index, count = CASES[case]
    options = dict(given)
    parent_id = parent if options.pop("parent", False) else None
    if options.pop("owner", None):
        options["owner_id"] = member.id
    if options.pop("first_minute", False):
        start = utcnow() - dt.timedelta(seconds=N)
        options.update(created_after=start, created_before=start + dt.timedelta(minutes=1))
    criteria = Search(JobFilter(**options), parent_id=parent_id)
    with statements(pg_db) as seen:
        page = admin_jobs.search(pg_db, JOBS, admin, criteria, limit=50)
    assert len(page.jobs) == count, case
    ids = [job.id for job in page.jobs]
    assert ids == sorted(ids, reverse=True)  # newest first
    [plan] = _plans(pg_db, seen)
    assert index in plan, plan
    assert "Seq Scan on jobs" not in plan, plan


def test_the_time_range_is_exact(
    pg_db: sessionmaker[Session], people: tuple[User, User], parent: uuid.UUID
) -> None:
    admin, _member = people
    start = utcnow() - dt.timedelta(seconds=N - 100)
    where = JobFilter(created_after=start, created_before=start + dt.timedelta(seconds=30))
    page = admin_jobs.search(pg_db, JOBS, admin, Search(where), limit=200)
    assert 29 <= len(page.jobs) <= 31
    assert all(start <= job.created_at < start + dt.timedelta(seconds=30) for job in page.jobs)


def test_the_error_text_search_looks_through_a_window_a_page(
    pg_db: sessionmaker[Session],
    people: tuple[User, User],
    parent: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin, _member = people
    monkeypatch.setattr(admin_jobs, "SCAN_WINDOW", 500)
    # "case 1%" is a literal percent sign: it matches no message.
    assert admin_jobs.search(pg_db, JOBS, admin, Search(error_text="case 1%")).jobs == []
    found: list[uuid.UUID] = []
    before = None
    pages = 0
    while True:
        page = admin_jobs.search(
            pg_db, JOBS, admin, Search(error_text="CASE 1999"), before=before, limit=50
        )
        found += [job.id for job in page.jobs]
        pages += 1
        if page.next_before is None:
            break
        assert page.looked_through == 500
        before = page.next_before
    # Failed jobs are i % 10 == 5: "case 1999" is in the messages of 19995 only (19990-19999).
    assert len(found) == 1
    assert pages == (N // 10) // 500 + 1
    with pytest.raises(InvalidRequestError) as raised:
        admin_jobs.search(
            pg_db, JOBS, admin, Search(JobFilter(statuses=("succeeded",)), error_text="x")
        )
    assert raised.value.errors == [
        {"field": "error", "message": "only with the statuses cancelled, failed, retrying"}
    ]


def test_a_search_that_takes_too_long_is_a_503_that_asks_to_narrow_it(
    pg_db: sessionmaker[Session], people: tuple[User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin, _member = people
    monkeypatch.setattr(admin_jobs, "TIMEOUT_SECONDS", 0.05)
    # A slow match: each row it is asked of takes 0.2 s.
    monkeypatch.setattr(
        admin_jobs, "_error_contains", lambda value: text("pg_sleep(0.2) IS NOT NULL")
    )
    with pg_db() as session:
        session.execute(
            text(
                "INSERT INTO jobs (id, type, queue, status, payload, error, attempts, "
                "worker_losses, handbacks, max_retries, owner_id, cancel_requested, created_at, "
                "updated_at) VALUES (gen_random_uuid(), 'system.echo', 'system', 'failed', '{}', "
                '\'{"type": "E", "message": "m"}\', 1, 0, 0, 0, :owner, false, now(), now())'
            ),
            {"owner": admin.id},
        )
        session.commit()
    with pytest.raises(TransientError) as raised:
        admin_jobs.search(pg_db, JOBS, admin, Search(error_text="m"))
    assert raised.value.status == 503
    assert "narrow it" in str(raised.value)
