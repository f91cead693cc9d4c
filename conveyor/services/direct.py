"""Per-thread autocommit psycopg connections for the statements every job runs.

A worker claims and finishes every job it runs. On PostgreSQL each of those is one statement
(see `services.runs`), and going through SQLAlchemy's pool, session and result machinery cost
more CPU than the database work. Each worker thread keeps its own connection here instead, in
autocommit mode, with psycopg's prepared statements.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from conveyor.errors import InvalidRequestError, TransientError

_by_engine: weakref.WeakKeyDictionary[Engine, DirectConnections] = weakref.WeakKeyDictionary()
_by_engine_lock = threading.Lock()


class DirectConnections:
    """One autocommit connection per thread, to the database of an engine."""

    def __init__(self, engine: Engine) -> None:
        url = engine.url.set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self._local = threading.local()
        self._all: weakref.WeakSet[psycopg.Connection[dict[str, Any]]] = weakref.WeakSet()
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        connection: psycopg.Connection[dict[str, Any]] | None = getattr(self._local, "c", None)
        if connection is None or connection.closed or connection.broken:
            connection = psycopg.connect(self.conninfo, autocommit=True, row_factory=dict_row)
            self._local.c = connection
            with self._lock:
                self._all.add(connection)
        return connection

    def fetchone(self, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """Run one statement (committed on its own) and return its first row."""
        try:
            return self._connection().execute(sql, params).fetchone()
        except psycopg.OperationalError as exc:  # dropped, restarted, unreachable
            self.discard()
            raise TransientError(f"database unavailable: {exc}") from exc
        except psycopg.DataError as exc:
            raise InvalidRequestError(f"a value cannot be stored: {exc}") from exc

    def execute(self, sql: str, params: dict[str, Any]) -> None:
        """Run one statement, committed on its own."""
        try:
            self._connection().execute(sql, params)
        except psycopg.OperationalError as exc:
            self.discard()
            raise TransientError(f"database unavailable: {exc}") from exc
        except psycopg.DataError as exc:
            raise InvalidRequestError(f"a value cannot be stored: {exc}") from exc

    def discard(self) -> None:
        connection = getattr(self._local, "c", None)
        self._local.c = None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        with self._lock:
            connections = list(self._all)
            self._all.clear()
        for connection in connections:
            connection.close()


def postgres_engine(db: sessionmaker[Session]) -> Engine | None:
    """The engine behind `db` if it is PostgreSQL (the only database with a direct path)."""
    engine = db.kw.get("bind")
    return engine if isinstance(engine, Engine) and engine.dialect.name == "postgresql" else None


def direct(engine: Engine) -> DirectConnections:
    """The direct connections to `engine`'s database (one set per engine)."""
    with _by_engine_lock:
        found = _by_engine.get(engine)
        if found is None:
            found = _by_engine[engine] = DirectConnections(engine)
        return found


def close(engine: Engine) -> None:
    with _by_engine_lock:
        found = _by_engine.pop(engine, None)
    if found is not None:
        found.close()
