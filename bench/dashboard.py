"""How fast the dashboard's figures are read on a database of a million jobs.

It creates a fresh PostgreSQL database (a random suffix in its name), migrates it, and fills
it with `seed(dsn, n)`: N jobs of a few types on a few queues, written by INSERT ... SELECT
over generate_series in one statement, with created_at spread over the last day (about 4 %
in the last hour), mostly succeeded, about 10 % failed (with one of a few error types and a
failed event carrying a traceback), 3 % cancelled and a few percent waiting, scheduled or
running; and a few live workers. Then it times each service function the dashboard calls
(the median of `--repeat` runs, 5 by default) and drops the database, also on errors and
Ctrl-C.

Standard output: a `#` header, then one `name: value ms` line per function. Progress goes to
standard error.

    .venv/bin/python bench/dashboard.py [-n 1000000] [--repeat 5]

`seed` is importable (`from bench.dashboard import seed`) to time other readers, such as
the pages (`bench/pages.py`), on the same data; it can spread the jobs over many owners.
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/dashboard.py`
    sys.path.insert(0, str(ROOT))

from bench.harness import fmt, interrupt_on_sigterm, log, source_version  # noqa: E402

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
TYPES = (
    "system.echo",
    "system.sleep",
    "system.fail",
    "reports.monthly",
    "reports.export",
    "notifications.deliver",
    "auth.send_reset",
    "business.import",
)
QUEUES = ("system", "reports", "notifications", "auth")
ERRORS = ("ValueError", "TimeoutError", "KeyError", "ConnectionError", "RuntimeError")
TRACEBACK = (
    'Traceback (most recent call last):\n  File "/app/jobs.py", line 42, in run\n    raise error\n'
)

# Each job's fate comes from i % 100: 10 failed, 3 cancelled, 3 queued, 1 retrying,
# 1 scheduled, 1 running, 81 succeeded. Its type, queue and error type from other digits
# of i, so that every type has failures of several kinds.
_SEED_JOBS = """
INSERT INTO jobs (id, type, queue, status, payload, result, error, error_type, attempts,
    worker_losses, handbacks, max_retries, owner_id, cancel_requested, created_at, updated_at,
    published_at, started_at, finished_at, next_attempt_at, lease_expires_at)
SELECT
    (lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0') || '7'
        || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
    (%(types)s::text[])[1 + (i / 100) %% cardinality(%(types)s::text[])],
    (%(queues)s::text[])[1 + (i / 7) %% cardinality(%(queues)s::text[])],
    status,
    '{"n": 1}'::jsonb,
    CASE WHEN status = 'succeeded' THEN '{"ok": true}'::jsonb END,
    CASE WHEN error_type IS NOT NULL
         THEN jsonb_build_object('type', error_type, 'message', 'case ' || (i %% 13)) END,
    error_type,
    CASE WHEN status IN ('queued', 'scheduled') THEN 0
         WHEN status IN ('failed', 'retrying') THEN 4 ELSE 1 END,
    0, 0, 3,
    (%(owners)s::uuid[])[
        1 + ('x' || substr(h, 28, 5))::bit(20)::int %% cardinality(%(owners)s::uuid[])],
    false, created, created,
    CASE WHEN status <> 'scheduled' THEN created END,
    CASE WHEN status IN ('running', 'succeeded', 'failed', 'cancelled')
         THEN created + interval '50 ms' END,
    CASE WHEN status IN ('succeeded', 'failed', 'cancelled')
         THEN created + interval '50 ms' + (i %% 2000) * interval '1 ms' END,
    CASE WHEN status = 'retrying' THEN created + interval '30 s'
         WHEN status = 'scheduled' THEN now() + interval '1 hour' END,
    CASE WHEN status = 'running' THEN now() + interval '1 minute' END
FROM (
    SELECT i, h,
        -- Spread over the last day: the fraction comes from the hash, not from i's order.
        now() - interval '24 hours' * (('x' || substr(h, 20, 8))::bit(32)::bigint
            / 4294967296.0) AS created,
        CASE WHEN i %% 100 < 10 THEN 'failed'
             WHEN i %% 100 < 13 THEN 'cancelled'
             WHEN i %% 100 < 16 THEN 'queued'
             WHEN i %% 100 < 17 THEN 'retrying'
             WHEN i %% 100 < 18 THEN 'scheduled'
             WHEN i %% 100 < 19 THEN 'running'
             ELSE 'succeeded' END AS status,
        CASE WHEN i %% 100 < 10 OR i %% 100 = 16
             THEN (%(errors)s::text[])[1 + (i / 3) %% cardinality(%(errors)s::text[])]
             END AS error_type
    FROM (SELECT i, md5(i::text) AS h FROM generate_series(1, %(n)s) AS i) AS numbered
) AS jobs_to_be
-- In time order, as a real table grows: the recent jobs share the last pages.
ORDER BY created
"""

_SEED_EVENTS = """
INSERT INTO job_events (job_id, at, kind, status, attempt, message, traceback)
SELECT id, finished_at, 'status', 'failed', attempts, error->>'message',
    %(traceback)s || '  ' || (error->>'type') || ': ' || (error->>'message')
FROM jobs WHERE status = 'failed'
"""

_SEED_WORKERS = """
INSERT INTO workers (id, pool, host, pid, queues, threads, jobs_in_hand, started_at,
    last_heartbeat_at)
SELECT 'bench-' || q || '-' || p, q, 'bench-host', 1000 + p, jsonb_build_array(q), 8, 2,
    now() - interval '1 hour', now()
FROM unnest(%(queues)s::text[]) AS q, generate_series(1, 2) AS p
"""


def seed(dsn: str, n: int, owners: int = 1) -> list[str]:
    """Fill the migrated database at `dsn` (a libpq or SQLAlchemy URL) with `n` jobs, the
    failed events and a few live workers (see the module docstring), then VACUUM ANALYZE.

    The jobs are spread over `owners` users: an admin, then members (the pages' benchmark
    asks for many, to filter by owner as a real table would). Their ids, the admin first."""
    conninfo = dsn.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as connection:
        emails = [f"bench-{i}-{secrets.token_hex(4)}@example.com" for i in range(owners)]
        ids = [
            str(row[0])
            for row in connection.execute(
                "INSERT INTO users (id, email, role, active, created_at) "
                "SELECT gen_random_uuid(), e, "
                "CASE WHEN k = 1 THEN 'admin' ELSE 'member' END, true, now() "
                "FROM unnest(%s::text[]) WITH ORDINALITY AS u(e, k) ORDER BY k RETURNING id",
                (emails,),
            ).fetchall()
        ]
        params: dict[str, Any] = {
            "n": n,
            "types": list(TYPES),
            "queues": list(QUEUES),
            "errors": list(ERRORS),
            "owners": ids,
            "traceback": TRACEBACK,
        }
        connection.execute(_SEED_JOBS, params)
        connection.execute(_SEED_EVENTS, params)
        connection.execute(_SEED_WORKERS, params)
        connection.execute("VACUUM ANALYZE jobs")
        connection.execute("VACUUM ANALYZE job_events")
        connection.execute("VACUUM ANALYZE workers")
        connection.execute("VACUUM ANALYZE users")
    return ids


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, migrated database; its SQLAlchemy URL. Dropped on the way out."""
    from conveyor.models.migrate import upgrade

    name = f"conveyor_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"dropped {name}")


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """The median wall time of `repeat` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def readers(url: str) -> dict[str, Callable[[], object]]:
    """The service functions the dashboard calls, by the name the output gives them."""
    from conveyor.db import make_engine, make_sessionmaker
    from conveyor.services import capacity, dashboard, error_groups, queues
    from conveyor.settings import Settings

    db = make_sessionmaker(make_engine(url))
    settings = Settings(database_url=url)
    timeout = dt.timedelta(seconds=30)
    [first] = error_groups.groups(db, limit=1)
    return {
        "throughput": lambda: dashboard.throughput(db),
        "queue_stats": lambda: queues.stats(db, QUEUES),
        "overview": lambda: dashboard.overview(db, worker_timeout=timeout, queue_names=QUEUES),
        "error_groups": lambda: error_groups.groups(db),
        "error_group": lambda: error_groups.group(db, first.job_type, first.error_type),
        "jobs_in_group": lambda: error_groups.jobs_in_group(
            db, first.job_type, first.error_type, limit=50
        ),
        "capacity": lambda: capacity.desired(db, settings),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="jobs to insert (10^6)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per function (5)")
    args = parser.parse_args(argv)
    with interrupt_on_sigterm(), fresh_database() as url:
        log(f"seeding {args.n} jobs")
        started = time.perf_counter()
        seed(url, args.n)
        seeded = time.perf_counter() - started
        log(f"seeded in {seeded:.1f} s")
        print(f"# dashboard figures, {args.n} jobs, median of {args.repeat}, {source_version()}")
        print(f"seed: {fmt(seeded, 1)} s")
        for name, fn in readers(url).items():
            print(f"{name}: {fmt(median_ms(fn, args.repeat), 1)} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
