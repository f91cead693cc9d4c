"""Which exceptions say that a service failed under a job, rather than the job itself."""

from __future__ import annotations

import sqlite3

import psycopg
import psycopg.errors
import pytest
import redis.exceptions
import sqlalchemy.exc

from conveyor.errors import (
    InfrastructureError,
    OutboundHttpError,
    TransientError,
    is_infrastructure_error,
)


def wrapped(orig: BaseException, *, invalidated: bool = False) -> sqlalchemy.exc.DBAPIError:
    """The exception SQLAlchemy raises for `orig` (its class follows the DBAPI error's)."""
    return sqlalchemy.exc.DBAPIError.instance(
        "UPDATE jobs SET progress = 0.5",
        {},
        orig,  # type: ignore[arg-type]
        psycopg.Error if isinstance(orig, psycopg.Error) else sqlite3.Error,
        connection_invalidated=invalidated,
    )


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.CrashShutdown("terminating connection because of crash"),
        psycopg.errors.CannotConnectNow("the database system is starting up"),
        psycopg.errors.TooManyConnections("too many clients already"),
        psycopg.errors.lookup("08006")("connection failure"),
        psycopg.OperationalError("connection failed: Connection refused"),
        psycopg.OperationalError("consuming input failed: server closed the connection"),
        psycopg.InterfaceError("the connection is closed"),
        wrapped(psycopg.errors.AdminShutdown("terminating connection"), invalidated=True),
        wrapped(psycopg.OperationalError("connection failed: Connection refused")),
        sqlalchemy.exc.DisconnectionError("connection found dead at checkout"),
        InfrastructureError("database unavailable: connection refused"),
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
    ],
    ids=lambda exc: type(exc).__name__ + ":" + str(exc)[:24],
)
def test_lost_or_refused_connections_are_infrastructure_errors(exc: BaseException) -> None:
    assert is_infrastructure_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("the job's own bug"),
        TransientError("a lock was busy"),
        OutboundHttpError("the provider did not answer"),
        psycopg.errors.UniqueViolation("duplicate key value"),
        psycopg.errors.SyntaxError("syntax error at or near"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.DeadlockDetected("deadlock detected"),
        wrapped(psycopg.errors.UniqueViolation("duplicate key value")),
        wrapped(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")),
        wrapped(sqlite3.OperationalError("database is locked")),
        redis.exceptions.ResponseError("WRONGTYPE Operation against a key"),
    ],
    ids=lambda exc: type(exc).__name__ + ":" + str(exc)[:24],
)
def test_a_statements_own_error_is_not_an_infrastructure_error(exc: BaseException) -> None:
    assert not is_infrastructure_error(exc)
