"""How fast the admin's job and error pages answer on a database of a million jobs.

It creates a fresh PostgreSQL database (a random suffix in its name), migrates it, and fills
it with N jobs of the job types Conveyor declares (each on its type's queue), owned by 1000
users, created over the last week, mostly succeeded, about 10 % failed and 1 % retrying (with
an error message), a few percent waiting or running; and a job with 500 events and 60
children. Then it asks the web app (in this process, the stub broker, no workers) for each
page: the job list without a filter and with each filter, the next page, an error-text
search, a job's page and its live part, the errors page, a group's page and its discard
confirmation; prints the median time of `--repeat` requests (7 by
default) of each, and drops the database, also on errors and Ctrl-C.

Standard output: a `#` header, then one `name: value ms` line per page. Progress goes to
standard error.

    .venv/bin/python bench/job_pages.py [-n 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/job_pages.py`
    sys.path.insert(0, str(ROOT))

from bench.harness import fmt, interrupt_on_sigterm, log, source_version  # noqa: E402

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
OWNERS = 1000
ERRORS = ("ValueError", "TimeoutError", "KeyError")

# Each job's fate comes from i % 100: 10 failed, 1 retrying, 2 queued, 1 running, 3
# cancelled, 83 succeeded; its type from i / 100, its owner from i % OWNERS (shifted).
_SEED_JOBS = """
INSERT INTO jobs (id, type, queue, status, payload, result, error, error_type, attempts,
    worker_losses,
    handbacks, max_retries, owner_id, cancel_requested, created_at, updated_at, published_at,
    started_at, finished_at, next_attempt_at, lease_expires_at)
SELECT
    (lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0') || '7'
        || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
    (%(types)s::text[])[1 + (i / 100) %% cardinality(%(types)s::text[])],
    (%(queues)s::text[])[1 + (i / 100) %% cardinality(%(types)s::text[])],
    status, '{"n": 1}'::jsonb,
    CASE WHEN status = 'succeeded' THEN '{"ok": true}'::jsonb END,
    CASE WHEN status IN ('failed', 'retrying')
         THEN jsonb_build_object('type', (%(errors)s::text[])[1 + (i / 3) %% 3],
                                 'message', 'case ' || (i %% 997)) END,
    CASE WHEN status IN ('failed', 'retrying') THEN (%(errors)s::text[])[1 + (i / 3) %% 3] END,
    CASE WHEN status IN ('queued') THEN 0 WHEN status IN ('failed', 'retrying') THEN 4 ELSE 1 END,
    0, 0, 3, (%(owners)s::uuid[])[1 + (i * 7) %% cardinality(%(owners)s::uuid[])], false,
    created, created, created,
    CASE WHEN status <> 'queued' THEN created + interval '50 ms' END,
    CASE WHEN status IN ('succeeded', 'failed', 'cancelled') THEN created + interval '1 s' END,
    CASE WHEN status = 'retrying' THEN created + interval '30 s' END,
    CASE WHEN status = 'running' THEN now() + interval '1 hour' END
FROM (
    SELECT i, h,
        now() - interval '7 days' * (('x' || substr(h, 20, 8))::bit(32)::bigint
            / 4294967296.0) AS created,
        CASE WHEN i %% 100 < 10 THEN 'failed'
             WHEN i %% 100 < 11 THEN 'retrying'
             WHEN i %% 100 < 13 THEN 'queued'
             WHEN i %% 100 < 14 THEN 'running'
             WHEN i %% 100 < 17 THEN 'cancelled'
             ELSE 'succeeded' END AS status
    FROM (SELECT i, md5(i::text) AS h FROM generate_series(1, %(n)s) AS i) AS numbered
) AS jobs_to_be
ORDER BY created
"""

_SEED_FAMILY = """
WITH parent AS (SELECT id FROM jobs WHERE status = 'failed' ORDER BY id DESC LIMIT 1)
INSERT INTO jobs (id, type, queue, status, payload, attempts, worker_losses, handbacks,
    max_retries, owner_id, parent_id, cancel_requested, created_at, updated_at)
SELECT gen_random_uuid(), 'system.echo', 'system', 'succeeded', '{}'::jsonb, 1, 0, 0, 0,
    (%(owners)s::uuid[])[1], parent.id, false, now(), now()
FROM parent, generate_series(1, 60)
"""

_SEED_EVENTS = """
INSERT INTO job_events (job_id, at, kind, status, attempt, progress, message, traceback)
SELECT %(job)s, now() - (500 - s) * interval '1 s', 'progress', 'running', 1 + s / 100,
    (s %% 100) / 100.0, 'step ' || s,
    CASE WHEN s %% 100 = 99 THEN 'Traceback (most recent call last):' || repeat(' frame', 200) END
FROM generate_series(1, 500) AS s
"""


def seed(dsn: str, n: int, types: list[tuple[str, str]]) -> tuple[str, str]:
    """Fill the migrated database at `dsn` (see the module docstring); the admin's email and
    the id of the job with many events and children."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        emails = [f"bench-{i}-{secrets.token_hex(3)}@example.com" for i in range(OWNERS)]
        owners = [
            row[0]
            for row in connection.execute(
                "INSERT INTO users (id, email, role, active, created_at) "
                "SELECT gen_random_uuid(), e, 'member', true, now() FROM unnest(%s::text[]) e "
                "RETURNING id",
                (emails,),
            ).fetchall()
        ]
        params: dict[str, Any] = {
            "n": n,
            "types": [name for name, _queue in types],
            "queues": [queue for _name, queue in types],
            "owners": owners,
            "errors": list(ERRORS),
        }
        connection.execute(_SEED_JOBS, params)
        connection.execute(_SEED_FAMILY, params)
        row = connection.execute(
            "SELECT parent_id FROM jobs WHERE parent_id IS NOT NULL LIMIT 1"
        ).fetchone()
        assert row is not None
        connection.execute(_SEED_EVENTS, {"job": row[0]})
        connection.execute("VACUUM ANALYZE jobs")
        connection.execute("VACUUM ANALYZE job_events")
        connection.execute("VACUUM ANALYZE users")
        return emails[3], str(row[0])


@contextmanager
def database() -> Iterator[str]:
    name = f"conveyor_bench_pages_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        yield f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        log(f"dropped {name}")


async def measure(url: str, owner: str, family: str, repeat: int) -> dict[str, float]:
    """The median milliseconds of each page, asked of the app through a test client."""
    from aiohttp.test_utils import TestClient, TestServer

    import conveyor.actors.all  # noqa: F401
    from conveyor import bootstrap
    from conveyor.http.app import create_app
    from conveyor.models import Role
    from conveyor.services.auth import TokenConfig, issue_token
    from conveyor.services.users import create_user
    from conveyor.settings import Settings

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=url,
        broker_url="stub://",
        redis_url=None,
        secret_key=secrets.token_urlsafe(32),
        worker_metrics_ports="",
    )
    container = bootstrap.Container(settings, bootstrap.ProcessRole.WEB)
    admin = create_user(container.db, f"admin-{secrets.token_hex(3)}@example.com", Role.ADMIN)
    headers = {"Authorization": f"Bearer {issue_token(TokenConfig.of(settings), admin.id)}"}
    week = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
    pages: dict[str, tuple[str, dict[str, str]]] = {
        "jobs_newest": ("/admin/jobs", {}),
        "jobs_status_failed": ("/admin/jobs", {"status": "failed"}),
        "jobs_status_running": ("/admin/jobs", {"status": "running"}),
        "jobs_type_rare": ("/admin/jobs", {"type": "auth.purge_expired"}),
        "jobs_queue_auth": ("/admin/jobs", {"queue": "auth"}),
        "jobs_queue_auth_queued": ("/admin/jobs", {"queue": "auth", "status": "queued"}),
        "jobs_owner": ("/admin/jobs", {"owner": owner}),
        "jobs_owner_failed": ("/admin/jobs", {"owner": owner, "status": "failed"}),
        "jobs_created_first_hour": (
            "/admin/jobs",
            {"created_to": (week + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")},
        ),
        "jobs_error_text_common": ("/admin/jobs", {"error": "case 1"}),
        "jobs_error_text_missing": ("/admin/jobs", {"error": "no such text"}),
        "jobs_children": ("/admin/jobs", {"parent": family}),
        "job_page_500_events": (f"/admin/jobs/{family}", {}),
        "job_live_500_events": (f"/admin/jobs/{family}/live", {}),
        "errors": ("/admin/errors", {}),
        "error_group": ("/admin/errors/group", {"type": "system.echo", "error_type": "KeyError"}),
        "error_group_discard_confirm": (
            "/admin/errors/group/discard",
            {"type": "system.echo", "error_type": "KeyError"},
        ),
    }
    found: dict[str, float] = {}
    app = create_app(container, sweeper=False)
    async with TestClient(TestServer(app)) as client:
        # The next page of the newest jobs: its link, from the first page.
        first = await (await client.get("/admin/jobs", headers=headers)).text()
        start = first.index('href="/admin/jobs?before=') + len('href="')
        pages["jobs_next_page"] = (first[start : first.index('"', start)], {})
        for name, (path, params) in pages.items():
            times = []
            for _ in range(repeat):
                began = time.perf_counter()
                response = await client.get(path, params=params, headers=headers)
                await response.read()
                times.append((time.perf_counter() - began) * 1000)
                if response.status != 200:
                    raise RuntimeError(f"{name}: {response.status} {await response.text()}")
            found[name] = statistics.median(times)
            log(f"{name}: {fmt(found[name])} ms")
    container.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="jobs in the table")
    parser.add_argument("--repeat", type=int, default=7, help="requests per page (median)")
    args = parser.parse_args()

    import conveyor.actors.all  # noqa: F401
    from conveyor.models.migrate import upgrade
    from conveyor.registry import JOBS

    types = [(t.name, t.queue) for t in JOBS]
    with interrupt_on_sigterm(), database() as dsn:
        url = "postgresql+psycopg://" + "127.0.0.1:5432/" + dsn.rpartition("dbname=")[2]
        url = url.replace("://", "://postgres@", 1)
        upgrade(url)
        log(f"seeding {args.n} jobs")
        began = time.perf_counter()
        owner, family = seed(dsn, args.n, types)
        log(f"seeded in {time.perf_counter() - began:.0f} s")
        found = asyncio.run(measure(url, owner, family, args.repeat))
    print(f"# job pages, {args.n} jobs, median of {args.repeat}, {source_version()}")
    for name, value in found.items():
        print(f"{name}: {fmt(value)} ms")


if __name__ == "__main__":
    main()
