"""The migrations build the schema the models declare, and `/readyz` knows their head (and
that a newer release's revision is not behind)."""

from __future__ import annotations

import logging

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
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
