"""The migrations build the schema the models declare, and `/readyz` knows their head (and
that a newer release's revision is not behind)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from conveyor.db import make_engine, make_sessionmaker
from conveyor.models import Base
from conveyor.models.migrate import (
    SchemaAheadError,
    SchemaBehindError,
    SchemaCheck,
    current,
    head,
    upgrade,
)

pytestmark = pytest.mark.integration


def test_the_migrated_database_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
    assert current(database_url) == head()


def _set_revision(url: str, revision: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def test_the_schema_check_passes_a_database_ahead_of_this_code_with_one_warning(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling upgrade migrates the database first: the processes still on the older
    code must stay ready, not answer 503 until they are restarted."""
    engine = make_engine(sqlite_url, pool_size=1)
    try:
        check = SchemaCheck(make_sessionmaker(engine), ttl=0)
        check()
        assert check.ahead is None

        _set_revision(sqlite_url, "9999")
        with caplog.at_level(logging.WARNING, logger="conveyor.models.migrate"):
            check()
            check()
        assert check.ahead == "9999"
        warnings = [r for r in caplog.records if r.name == "conveyor.models.migrate"]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert "9999, ahead of this code" in warnings[0].getMessage()
        with pytest.raises(SchemaAheadError, match="ahead of this code"):
            upgrade(sqlite_url)
        assert current(sqlite_url) == "9999"  # left as it is

        _set_revision(sqlite_url, "0002")  # a known, older revision: behind
        with pytest.raises(
            SchemaBehindError, match=f"at revision 0002, and this code needs {head()}"
        ):
            check()
    finally:
        engine.dispose()


# --- 0012: each job's error type, filled in batches -----------------------------------------

_JOBS_PG = """
INSERT INTO jobs (id, type, queue, status, payload, error, attempts, worker_losses,
    max_retries, owner_id, cancel_requested, created_at, updated_at)
SELECT gen_random_uuid(), 'system.fail', 'system',
    CASE WHEN i % 3 = 0 THEN 'succeeded' ELSE 'failed' END, '{}'::jsonb,
    CASE WHEN i % 3 <> 0 THEN jsonb_build_object('type', 'E' || (i % 7), 'message', 'm') END,
    1, 0, 3, :owner, false, now(), now()
FROM generate_series(1, :n) AS i
"""
_JOBS_SQLITE = """
WITH RECURSIVE numbers(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM numbers WHERE i < :n)
INSERT INTO jobs (id, type, queue, status, payload, error, attempts, worker_losses,
    max_retries, owner_id, cancel_requested, created_at, updated_at)
SELECT lower(hex(randomblob(16))), 'system.fail', 'system',
    CASE WHEN i % 3 = 0 THEN 'succeeded' ELSE 'failed' END, '{}',
    CASE WHEN i % 3 <> 0 THEN json_object('type', 'E' || (i % 7), 'message', 'm') END,
    1, 0, 3, :owner, 0, datetime('now'), datetime('now')
FROM numbers
"""


@pytest.fixture(params=["postgresql", "sqlite"])
def at_0011(request: pytest.FixtureRequest, tmp_path: Any, services: None) -> Iterator[str]:
    """A new database migrated to 0011 (before the error types); its URL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'at_0011.db'}"
        upgrade(url, "0011")
        yield url
        return
    name = f"conveyor_test_0011_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        upgrade(url, "0011")
        yield url
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_0012_fills_each_jobs_error_type_in_batches_by_id_range(at_0011: str) -> None:
    n = 25_000  # three statements of 10 000 jobs at most
    engine = create_engine(at_0011, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            owner = uuid.uuid4()
            sqlite = connection.dialect.name == "sqlite"
            connection.execute(
                text(
                    "INSERT INTO users (id, email, role, active, created_at) "
                    "VALUES (:id, 'owner@example.com', 'member', true, CURRENT_TIMESTAMP)"
                ),
                {"id": owner.hex if sqlite else owner},
            )
            connection.execute(
                text(_JOBS_SQLITE if sqlite else _JOBS_PG),
                {"n": n, "owner": owner.hex if sqlite else owner},
            )
    finally:
        engine.dispose()
    fills: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().startswith("UPDATE jobs SET error_type"):
            fills.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        upgrade(at_0011, "0012")
    finally:
        event.remove(Engine, "before_cursor_execute", seen)

    assert len(fills) == 3
    engine = create_engine(at_0011, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            found = dict(
                connection.execute(
                    text(
                        "SELECT coalesce(error_type, '-'), count(*) FROM jobs "
                        "GROUP BY coalesce(error_type, '-')"
                    )
                ).all()
            )
    finally:
        engine.dispose()
    assert found["-"] == n // 3
    assert sum(found.values()) == n
    assert sorted(found) == ["-", *(f"E{k}" for k in range(7))]
