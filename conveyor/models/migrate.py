"""The Alembic migrations without an alembic.ini: upgrade, and where a database stands."""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)

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


class SchemaAheadError(Exception):
    """The database is at a revision this code does not know: a newer release migrated it
    (during a rolling upgrade, or after a rollback of the code). This code cannot upgrade
    it, and runs on it: a migration keeps working with the code before it."""

    def __init__(self, found: str) -> None:
        super().__init__(
            f"the database is at revision {found}, ahead of this code (the newest it knows "
            f"is {head()})"
        )
        self.found = found


def is_ahead(found: str | None) -> bool:
    """Whether `found` is a revision this code does not know (a newer release's)."""
    return found is not None and found not in {r.id for r in history()}


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database at `url` to `revision` (the newest by default); the revisions it
    was at before and is at after. SchemaAheadError when the database is ahead of this code:
    it is left as it is."""
    before = current(url)
    if is_ahead(before):
        assert before is not None
        raise SchemaAheadError(before)
    command.upgrade(alembic_config(url), revision)
    return before, current(url)


class SchemaBehindError(Exception):
    """The database is not migrated to the revision this code needs."""


class SchemaCheck:
    """Raises while the database's schema is behind this code (the readiness check). A
    database ahead of this code (a revision it does not know, from a newer release) passes,
    with one WARNING: during a rolling upgrade the database is upgraded first, and the
    processes still on the older code keep serving. A database found up to date (or ahead)
    is not asked again for `ttl` seconds: one small query a minute at most, however often
    the check runs."""

    def __init__(self, db: sessionmaker[Session], *, ttl: float = 60.0) -> None:
        self.db = db
        self.ttl = ttl
        self._ok_until = 0.0
        #: The revision the database was found at when it was ahead of this code.
        self.ahead: str | None = None

    def __call__(self) -> None:
        if time.monotonic() < self._ok_until:
            return
        with self.db() as session:
            found = current_of(session.connection())
        if found is None:
            raise SchemaBehindError(f"the database has no Conveyor tables yet (needs {head()})")
        if is_ahead(found):
            if self.ahead != found:
                logger.warning(
                    "%s; running on it, as a migration keeps working with the code before it",
                    SchemaAheadError(found),
                    extra={"revision": found, "head": head()},
                )
            self.ahead = found
        elif found != head():
            raise SchemaBehindError(
                f"the database is at revision {found}, and this code needs {head()}"
            )
        self._ok_until = time.monotonic() + self.ttl
