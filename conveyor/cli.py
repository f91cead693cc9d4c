"""The `conveyor` command: dev, web, db, users, tokens, workers, queues."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from conveyor import bootstrap
from conveyor.errors import ConveyorError
from conveyor.models import Role
from conveyor.settings import Settings, get_settings


def _container(settings: Settings) -> bootstrap.Container:
    return bootstrap.Container(settings, bootstrap.ProcessRole.CLI)


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.dev import run_dev

    return run_dev(settings, host=args.host, port=args.port)


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    import conveyor.actors.all  # noqa: F401  (every job type, to validate submissions)
    from conveyor.http.app import create_app
    from conveyor.http.server import serve
    from conveyor.logs import configure_logging
    from conveyor.services.auth import TokenConfig

    configure_logging(settings.log_level, settings.log_format)
    TokenConfig.of(settings)  # refuse to start without a secret key
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    container = bootstrap.Container(settings, bootstrap.ProcessRole.WEB)
    try:
        asyncio.run(serve(create_app(container), settings, host, port, shutdown_timeout=10))
    finally:
        container.close()
    return 0


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.models.migrate import upgrade

    upgrade(settings.database_url, args.revision)
    print(f"database upgraded to {args.revision}")
    return 0


def cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services.users import create_user

    with _container(settings) as container:
        user = create_user(container.db, args.email, Role(args.role))
    print(f"user: {user.email}\nid: {user.id}\nrole: {user.role}")
    print(f"next: conveyor tokens issue {user.email}")
    return 0


def cmd_tokens_issue(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services.auth import TokenConfig, issue_token
    from conveyor.services.users import get_by_email

    config = TokenConfig.of(settings)
    with _container(settings) as container:
        user = get_by_email(container.db, args.email)
    ttl = dt.timedelta(days=args.days) if args.days else None
    token = issue_token(config, user.id, ttl=ttl)
    print(token)
    if sys.stdout.isatty():
        print(f"\nuse it as: curl -H 'Authorization: Bearer {token}' …", file=sys.stderr)
    return 0


# --- operations: `conveyor workers`, `conveyor queues` ------------------------------------

WORKERS_EPILOG = """\
Lists the worker processes that recorded a heartbeat within CONVEYOR_WORKER_TIMEOUT_SECONDS
(each records itself every CONVEYOR_WORKER_HEARTBEAT_SECONDS, and removes itself when it stops
cleanly). JOBS is the jobs it runs now.

example:
  conveyor workers
  conveyor workers --json | jq '.[] | select(.pool == "system")'
"""

QUEUES_EPILOG = """\
Per queue, from the database (the same on RabbitMQ and Redis): WAITING jobs a worker may start
now (queued, or retrying and due), SCHEDULED ones (delayed, or retrying later), RUNNING and
FAILED ones, and how long the OLDEST WAITING job has been due.

example:
  conveyor queues
  conveyor queues --json
"""


def _age(seconds: float) -> str:
    """`45s`, `12m`, `3h`, `2d`: whole units, two of the next smaller before switching."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [list(header), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(header))]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.models.base import utcnow
    from conveyor.services import workers

    timeout = dt.timedelta(seconds=settings.worker_timeout_seconds)
    with _container(settings) as container:
        alive = workers.alive(container.db, timeout)
    now = utcnow()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": w.id,
                        "pool": w.pool,
                        "host": w.host,
                        "pid": w.pid,
                        "queues": w.queues,
                        "threads": w.threads,
                        "jobs_in_hand": w.jobs_in_hand,
                        "started_at": w.started_at.isoformat(),
                        "last_heartbeat_at": w.last_heartbeat_at.isoformat(),
                    }
                    for w in alive
                ],
                indent=2,
            )
        )
        return 0
    if not alive:
        print("no live worker processes")
        return 0
    rows = [
        (
            w.pool,
            w.host,
            w.pid,
            w.threads,
            w.jobs_in_hand,
            _age((now - w.last_heartbeat_at).total_seconds()) + " ago",
            _age((now - w.started_at).total_seconds()),
        )
        for w in alive
    ]
    print(_table(("POOL", "HOST", "PID", "THREADS", "JOBS", "LAST HEARTBEAT", "UP FOR"), rows))
    return 0


def cmd_queues(args: argparse.Namespace, settings: Settings) -> int:
    import conveyor.actors.all  # noqa: F401  (every job type, so every queue is listed)
    from conveyor.registry import JOBS
    from conveyor.services import queues

    with _container(settings) as container:
        found = queues.stats(container.db, {t.queue for t in JOBS}, failed=True)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "queue": q.queue,
                        "waiting": q.waiting,
                        "scheduled": q.scheduled,
                        "running": q.running,
                        "failed": q.failed,
                        "oldest_waiting_seconds": round(q.oldest_waiting_seconds, 3),
                    }
                    for q in found
                ],
                indent=2,
            )
        )
        return 0
    rows = [
        (
            q.queue,
            q.waiting,
            q.scheduled,
            q.running,
            q.failed or 0,
            _age(q.oldest_waiting_seconds) if q.waiting else "-",
        )
        for q in found
    ]
    print(_table(("QUEUE", "WAITING", "SCHEDULED", "RUNNING", "FAILED", "OLDEST WAITING"), rows))
    return 0


def _add_operations(sub: Any) -> None:
    """The operations commands' parsers (`workers`, `queues`)."""
    formatter = argparse.RawDescriptionHelpFormatter
    workers = sub.add_parser(
        "workers",
        help="live worker processes: pool, host, pid, threads, jobs in hand, last heartbeat",
        description="The live worker processes, from the worker registry.",
        epilog=WORKERS_EPILOG,
        formatter_class=formatter,
    )
    workers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    workers.set_defaults(run=cmd_workers)
    queues = sub.add_parser(
        "queues",
        help="per queue: waiting, scheduled, running, failed, oldest waiting",
        description="The depth of each queue, from the database.",
        epilog=QUEUES_EPILOG,
        formatter_class=formatter,
    )
    queues.add_argument("--json", action="store_true", help="print JSON instead of a table")
    queues.set_defaults(run=cmd_queues)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="everything in one process, no servers needed")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    dev.set_defaults(run=cmd_dev)

    web = sub.add_parser("web", help="the HTTP API (and the outbox sweeper)")
    web.add_argument("--host", default=None, help="default: CONVEYOR_HOST")
    web.add_argument("--port", type=int, default=None, help="default: CONVEYOR_PORT")
    web.set_defaults(run=cmd_web)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db", required=True)
    up = db.add_parser("upgrade", help="apply migrations")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(run=cmd_db_upgrade)

    users = sub.add_parser("users", help="accounts").add_subparsers(dest="users", required=True)
    create = users.add_parser("create", help="create a user")
    create.add_argument("email")
    create.add_argument("--role", choices=[r.value for r in Role], default=Role.MEMBER.value)
    create.set_defaults(run=cmd_users_create)

    tokens = sub.add_parser("tokens", help="API tokens").add_subparsers(
        dest="tokens", required=True
    )
    issue = tokens.add_parser("issue", help="print a bearer token for a user")
    issue.add_argument("email")
    issue.add_argument(
        "--days",
        type=float,
        default=None,
        help="lifetime in days (default: CONVEYOR_TOKEN_TTL_SECONDS; at most "
        "CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS)",
    )
    issue.set_defaults(run=cmd_tokens_issue)
    _add_operations(sub)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args, get_settings()))
    except ConveyorError as exc:
        print(f"conveyor: {exc.detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
