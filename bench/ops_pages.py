"""How fast the operators' pages (overview, queues, workers, notifications) answer on a
database of a million jobs.

It creates a fresh, migrated PostgreSQL database and fills it with the dashboard benchmark's
`seed` (`bench/dashboard.py`: jobs over the last day, about 4 % in the last hour, 5 % waiting
or scheduled, 10 % failed, a few live workers), plus N / 5 notification deliveries created
over the last day (about 4 % in the last hour) on three channels, mostly sent, some failed,
pending or suppressed. Then it asks the web app (in this process, the stub broker, no
workers, no sweeper) for each page and its live part, prints the median time of `--repeat`
requests (7 by default) of each, and drops the database, also on errors and Ctrl-C.

Standard output: a `#` header, then one `name: value ms` line per page. Progress goes to
standard error.

    .venv/bin/python bench/ops_pages.py [-n 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/ops_pages.py`
    sys.path.insert(0, str(ROOT))

from bench.dashboard import fresh_database, seed  # noqa: E402
from bench.harness import fmt, interrupt_on_sigterm, log, source_version  # noqa: E402

PAGES = {
    "overview": "/admin/",
    "overview_live": "/admin/overview/live",
    "queues": "/admin/queues",
    "queues_live": "/admin/queues/live",
    "purge_confirm": "/admin/queues/system/purge",
    "workers": "/admin/workers",
    "notifications": "/admin/notifications",
}

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


def seed_deliveries(url: str, n: int) -> None:
    """Add `n` deliveries of one notification (see the module docstring)."""
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        connection.execute(_SEED_DELIVERIES, {"n": n})
        connection.commit()
        connection.autocommit = True
        connection.execute("VACUUM ANALYZE deliveries")


async def measure(url: str, repeat: int) -> dict[str, float]:
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
    found: dict[str, float] = {}
    async with TestClient(TestServer(create_app(container, sweeper=False))) as client:
        for name, path in PAGES.items():
            times = []
            for _ in range(repeat):
                began = time.perf_counter()
                response = await client.get(path, headers=headers)
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
        seed(url, args.n)
        seed_deliveries(url, args.n // 5)
        log(f"seeded in {time.perf_counter() - began:.0f} s")
        found = asyncio.run(measure(url, args.repeat))
    print(f"# operators' pages, {args.n} jobs, median of {args.repeat}, {source_version()}")
    for name, value in found.items():
        print(f"{name}: {fmt(value)} ms")


if __name__ == "__main__":
    main()
