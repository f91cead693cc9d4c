"""The database: SQLAlchemy engine and sessions for PostgreSQL (psycopg 3) or SQLite, and
per-thread direct psycopg connections for the statements every job runs.

A worker claims and finishes every job it runs. On PostgreSQL each of those is one statement
(see `services.runs`), and going through SQLAlchemy's pool, session and result machinery cost
more CPU than the database work. Each worker thread keeps its own connection instead, in
autocommit mode, with psycopg's prepared statements.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from conveyor.errors import InfrastructureError, InvalidRequestError


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for `url`; SQLite gets WAL mode and a busy timeout so threads can share it.

    No pre-ping (it costs a round trip per checkout): a connection found dead is discarded
    with the pool, and the caller's retry gets a fresh one.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=pool_size
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


#: `json.dumps(value, allow_nan=False)` builds an encoder on every call; this one is reused.
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


def storable_json(value: Any) -> str:
    """`value` as JSON text that every database column stores; ValueError for NaN,
    infinities and NUL characters (which PostgreSQL's JSONB and text refuse)."""
    text = _STRICT_JSON.encode(value)
    if "\\u0000" in text and _has_nul(value):  # the escape may also be literal text
        raise ValueError("it contains a NUL character (\\u0000), which no column stores")
    return text


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(item) for item in value)
    return False


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def ping(db: sessionmaker[Session]) -> None:
    """Raise unless the database answers (the readiness probe)."""
    with db() as session:
        session.execute(text("SELECT 1"))


def bound(session: Session, timeout_seconds: float | None) -> None:
    """Bound the statements of `session`'s transaction to `timeout_seconds` (PostgreSQL;
    SQLite has its busy timeout)."""
    if timeout_seconds is not None and session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_seconds * 1000)}"))


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on error."""
    with factory() as session, session.begin():
        yield session


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

    def _connection(self) -> tuple[psycopg.Connection[dict[str, Any]], bool]:
        """This thread's connection, and whether it was made just now."""
        connection: psycopg.Connection[dict[str, Any]] | None = getattr(self._local, "c", None)
        if connection is not None and not (connection.closed or connection.broken):
            return connection, False
        connection = psycopg.connect(self.conninfo, autocommit=True, row_factory=dict_row)
        self._local.c = connection
        with self._lock:
            self._all.add(connection)
        return connection, True

    def _run(
        self, sql: str, params: dict[str, Any], resend: bool
    ) -> psycopg.Cursor[dict[str, Any]]:
        try:
            connection, fresh = self._connection()
            try:
                return connection.execute(sql, params)
            except psycopg.OperationalError:
                if not resend or fresh or not (connection.closed or connection.broken):
                    raise
            # The connection was cut since its last use (a database restart). There is no
            # pre-ping on this path: the statement is sent once more on a new connection.
            self.discard()
            return self._connection()[0].execute(sql, params)
        except psycopg.OperationalError as exc:  # dropped, restarted, unreachable
            self.discard()
            raise InfrastructureError(f"database unavailable: {exc}") from exc
        except psycopg.DataError as exc:
            raise InvalidRequestError(f"a value cannot be stored: {exc}") from exc

    def fetchone(
        self, sql: str, params: dict[str, Any], *, resend: bool = False
    ) -> dict[str, Any] | None:
        """Run one statement (committed on its own) and return its first row.

        `resend`: the statement is guarded (running it twice changes nothing the first run did
        not), so when this thread's connection turns out to have been cut while idle, it is
        sent again on a new one instead of failing. A statement cut off in flight may then
        run twice, so only guarded statements may ask for it.
        """
        return self._run(sql, params, resend).fetchone()

    def execute(self, sql: str, params: dict[str, Any], *, resend: bool = False) -> None:
        """Run one statement, committed on its own (`resend`: as for `fetchone`)."""
        self._run(sql, params, resend)

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


def direct(db: sessionmaker[Session]) -> DirectConnections | None:
    """The direct connections to the database behind `db` (one set per engine), or None
    when it is not PostgreSQL (the only database with a direct path)."""
    engine = db.kw.get("bind")
    if not (isinstance(engine, Engine) and engine.dialect.name == "postgresql"):
        return None
    with _by_engine_lock:
        found = _by_engine.get(engine)
        if found is None:
            found = _by_engine[engine] = DirectConnections(engine)
        return found


def close_direct(engine: Engine) -> None:
    """Close the direct connections made to `engine`'s database, in every thread."""
    with _by_engine_lock:
        found = _by_engine.pop(engine, None)
    if found is not None:
        found.close()
