"""How fast the admin's and the members' pages answer on a database of a million jobs.

It creates a fresh, migrated PostgreSQL database and fills it once with the dashboard
benchmark's `seed` (`bench/dashboard.py`: jobs over the last day, about 4 % in the last hour,
5 % waiting or scheduled, 10 % failed, a few live workers), the jobs spread over 1000 owners;
plus a failed job with 500 events and 60 children, and N / 5 notification deliveries created
over the last day (about 4 % in the last hour) on three channels, mostly sent, some failed,
pending or suppressed. Then it asks the web app (in this process, the stub broker, no
workers, no sweeper) for every admin page (as an admin) and every /app page (as a member who
owns a thousandth of the jobs), each page's live part too, prints the median time of
`--repeat` requests (7 by default) of each, and drops the database, also on errors and Ctrl-C.

Standard output: a `#` header, then one `name: value ms` line per page. Progress goes to
standard error.

    .venv/bin/python bench/pages.py [-n 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import statistics
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/pages.py`
    sys.path.insert(0, str(ROOT))

from bench.dashboard import fresh_database, seed  # noqa: E402
from bench.harness import fmt, interrupt_on_sigterm, log, source_version  # noqa: E402

OWNERS = 1000

# A page: its path and query, and whether the admin (True) or the member asks for it.
Page = tuple[str, dict[str, str], bool]

_SEED_FAMILY = """
WITH parent AS (
    SELECT id FROM jobs WHERE status = 'failed' AND owner_id = %(member)s
    ORDER BY id DESC LIMIT 1
)
INSERT INTO jobs (id, type, queue, status, payload, attempts, worker_losses, handbacks,
    max_retries, owner_id, parent_id, cancel_requested, created_at, updated_at)
SELECT gen_random_uuid(), 'system.echo', 'system', 'succeeded', '{}'::jsonb, 1, 0, 0, 0,
    %(member)s, parent.id, false, now(), now()
FROM parent, generate_series(1, 60)
RETURNING parent_id
"""

_SEED_EVENTS = """
INSERT INTO job_events (job_id, at, kind, status, attempt, progress, message, traceback)
SELECT %(job)s, now() - (500 - s) * interval '1 s', 'progress', 'running', 1 + s / 100,
    (s %% 100) / 100.0, 'step ' || s,
    CASE WHEN s %% 100 = 99 THEN 'Traceback (most recent call last):' || repeat(' frame', 200) END
FROM generate_series(1, 500) AS s
"""

# Each delivery's fate comes from i % 100: 85 sent, 5 failed, 5 pending, 5 suppressed; its
# channel from i % 3. Its id is a UUIDv7 of its creation time, as the app makes them.
_SEED_DELIVERIES = """
WITH notification AS (
    INSERT INTO notifications (id, kind, owner_id, context, created_at, sensitive)
    SELECT gen_random_uuid(), 'job_finished', id, '{}'::jsonb, now(), false
    FROM users LIMIT 1
    RETURNING id
)
INSERT INTO deliveries (id, notification_id, channel, address, status, attempts,
    claimed_attempt, last_error, provider, created_at, updated_at, sent_at)
SELECT
    (lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0') || '7'
        || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
    notification.id,
    (ARRAY['email', 'webhook', 'sms'])[1 + i %% 3],
    'someone-' || i || '@example.com',
    status,
    CASE WHEN status = 'pending' THEN 0 ELSE 1 END, 1,
    CASE WHEN status = 'failed' THEN 'provider said no (case ' || i %% 7 || ')' END,
    CASE WHEN status <> 'pending' THEN (ARRAY['smtp', 'http', 'twilio'])[1 + i %% 3] END,
    created, created,
    CASE WHEN status = 'sent' THEN created END
FROM notification, (
    SELECT i, h,
        now() - interval '24 hours' * (('x' || substr(h, 20, 8))::bit(32)::bigint
            / 4294967296.0) AS created,
        CASE WHEN i %% 100 < 85 THEN 'sent'
             WHEN i %% 100 < 90 THEN 'failed'
             WHEN i %% 100 < 95 THEN 'pending'
             ELSE 'suppressed' END AS status
    FROM (SELECT i, md5('d' || i) AS h FROM generate_series(1, %(n)s) AS i) AS numbered
) AS deliveries_to_be
ORDER BY created
"""


def seed_pages(url: str, member: str, deliveries: int) -> str:
    """Add to the seeded database a failed job of `member` with 500 events and 60 children,
    and `deliveries` deliveries of one notification (see the module docstring); that job's
    id."""
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        row = connection.execute(_SEED_FAMILY, {"member": member}).fetchone()
        assert row is not None
        family = str(row[0])
        connection.execute(_SEED_EVENTS, {"job": family})
        connection.execute(_SEED_DELIVERIES, {"n": deliveries})
        connection.commit()
        connection.autocommit = True
        for table in ("jobs", "job_events", "deliveries"):
            connection.execute(f"VACUUM ANALYZE {table}")
    return family


def pages(member: str, family: str) -> dict[str, Page]:
    """Every page to time, by the name the output gives it (the next page of the jobs is
    added from the first page's link)."""
    first_hour = dt.datetime.now(dt.UTC) - dt.timedelta(hours=23)
    group = {"type": "system.echo", "error_type": "KeyError"}
    return {
        "overview": ("/admin/", {}, True),
        "overview_live": ("/admin/overview/live", {}, True),
        "queues": ("/admin/queues", {}, True),
        "queues_live": ("/admin/queues/live", {}, True),
        "purge_confirm": ("/admin/queues/system/purge", {}, True),
        "pause_confirm": ("/admin/queues/system/pause", {}, True),
        "workers": ("/admin/workers", {}, True),
        "workers_live": ("/admin/workers/live", {}, True),
        "notifications": ("/admin/notifications", {}, True),
        "jobs_newest": ("/admin/jobs", {}, True),
        "jobs_status_failed": ("/admin/jobs", {"status": "failed"}, True),
        "jobs_status_running": ("/admin/jobs", {"status": "running"}, True),
        "jobs_type": ("/admin/jobs", {"type": "reports.export"}, True),
        "jobs_queue_auth": ("/admin/jobs", {"queue": "auth"}, True),
        "jobs_queue_auth_queued": ("/admin/jobs", {"queue": "auth", "status": "queued"}, True),
        "jobs_owner": ("/admin/jobs", {"owner": member}, True),
        "jobs_owner_failed": ("/admin/jobs", {"owner": member, "status": "failed"}, True),
        "jobs_created_first_hour": (
            "/admin/jobs",
            {"created_to": first_hour.strftime("%Y-%m-%dT%H:%M")},
            True,
        ),
        "jobs_error_text_common": ("/admin/jobs", {"error": "case 1"}, True),
        "jobs_error_text_missing": ("/admin/jobs", {"error": "no such text"}, True),
        "jobs_children": ("/admin/jobs", {"parent": family}, True),
        "job_page_500_events": (f"/admin/jobs/{family}", {}, True),
        "job_live_500_events": (f"/admin/jobs/{family}/live", {}, True),
        "errors": ("/admin/errors", {}, True),
        "error_group": ("/admin/errors/group", group, True),
        "error_group_discard_confirm": ("/admin/errors/group/discard", group, True),
        "audit": ("/admin/audit", {}, True),
        "users": ("/admin/users", {}, True),
        "user_page": (f"/admin/users/{member}", {}, True),
        "app_jobs": ("/app/", {}, False),
        "app_jobs_live": ("/app/jobs/live", {}, False),
        "app_new_job": ("/app/jobs/new", {}, False),
        "app_job_500_events": (f"/app/jobs/{family}", {}, False),
        "app_job_live_500_events": (f"/app/jobs/{family}/live", {}, False),
        "app_preferences": ("/app/preferences", {}, False),
    }


async def measure(url: str, member: str, family: str, repeat: int) -> dict[str, float]:
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
    tokens = TokenConfig.of(settings)
    as_admin = {"Authorization": f"Bearer {issue_token(tokens, admin.id)}"}
    as_member = {"Authorization": f"Bearer {issue_token(tokens, member)}"}
    todo = pages(member, family)
    found: dict[str, float] = {}
    async with TestClient(TestServer(create_app(container, sweeper=False))) as client:
        # The next page of the newest jobs: its link, from the first page.
        first = await (await client.get("/admin/jobs", headers=as_admin)).text()
        start = first.index('href="/admin/jobs?before=') + len('href="')
        todo["jobs_next_page"] = (first[start : first.index('"', start)], {}, True)
        for name, (path, params, admin_asks) in todo.items():
            headers = as_admin if admin_asks else as_member
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
    with interrupt_on_sigterm(), fresh_database() as url:
        log(f"seeding {args.n} jobs and {args.n // 5} deliveries")
        began = time.perf_counter()
        member = seed(url, args.n, owners=OWNERS)[1]
        family = seed_pages(url, member, args.n // 5)
        log(f"seeded in {time.perf_counter() - began:.0f} s")
        found = asyncio.run(measure(url, member, family, args.repeat))
    print(f"# pages, {args.n} jobs, median of {args.repeat}, {source_version()}")
    for name, value in found.items():
        print(f"{name}: {fmt(value)} ms")


if __name__ == "__main__":
    main()
