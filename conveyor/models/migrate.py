"""The Alembic migrations without an alembic.ini: upgrade, and where a database stands."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def head() -> str:
    """The newest revision this code knows (what `conveyor db upgrade` brings a database to)."""
    found = _scripts().get_current_head()
    assert found is not None, "no migrations"
    return found


@dataclass(frozen=True)
class Revision:
    id: str
    down: str | None
    message: str


def history() -> list[Revision]:
    """Every migration, oldest first."""
    revisions = [
        Revision(
            script.revision,
            script.down_revision if isinstance(script.down_revision, str) else None,
            (script.doc or "").strip(),
        )
        for script in _scripts().walk_revisions()
    ]
    return list(reversed(revisions))


def current_of(connection: Connection) -> str | None:
    """The revision the database on `connection` is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def current(url: str) -> str | None:
    """The revision the database at `url` is at (None: never migrated)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return current_of(connection)
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database at `url` to `revision` (the newest by default); the revisions it
    was at before and is at after."""
    before = current(url)
    command.upgrade(alembic_config(url), revision)
    return before, current(url)


class SchemaBehindError(Exception):
    """The database is not migrated to the revision this code needs."""


class SchemaCheck:
    """Raises while the database's schema is behind this code (the readiness check). A
    database found up to date is not asked again for `ttl` seconds: one small query a
    minute at most, however often the check runs."""

    def __init__(self, db: sessionmaker[Session], *, ttl: float = 60.0) -> None:
        self.db = db
        self.ttl = ttl
        self._ok_until = 0.0

    def __call__(self) -> None:
        if time.monotonic() < self._ok_until:
            return
        with self.db() as session:
            found = current_of(session.connection())
        if found is None:
            raise SchemaBehindError(f"the database has no Conveyor tables yet (needs {head()})")
        if found != head():
            raise SchemaBehindError(
                f"the database is at revision {found}, and this code needs {head()}"
            )
        self._ok_until = time.monotonic() + self.ttl
