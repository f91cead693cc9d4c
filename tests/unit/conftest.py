"""Fixtures of the unit tests: SQLite sessions, users, a job factory and boundary fakes."""

from __future__ import annotations

from tests.unit.support import (  # noqa: F401  (fixtures)
    admin,
    announcer,
    db,
    enqueuer,
    history,
    load,
    make_job,
    member,
    other,
    set_job,
)
