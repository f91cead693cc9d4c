"""The `conveyor` command: dev, web, worker, release, db, users, tokens."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence

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


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.workers.runner import run_pool

    return run_pool(args.pool, args.dramatiq_args, settings)


def cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    import logging
    import signal

    from conveyor.logs import configure_logging
    from conveyor.models.migrate import upgrade
    from conveyor.settings import local_procfile_runner

    configure_logging(settings.log_level, settings.log_format)
    logger = logging.getLogger("conveyor.release")
    upgrade(settings.database_url)
    logger.info("release: database schema upgraded to the newest revision")
    runner = local_procfile_runner()
    if not (args.idle or (runner is not None and not args.exit)):
        return 0
    # A local Procfile runner stops every process when one exits: stay until it stops us.
    stop = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    logger.info(
        "release: done; idle until stopped (%s: a local Procfile runner, which would stop "
        "every process if this one exited)",
        runner or "--idle",
    )
    received = signal.sigwait(stop)
    logger.info("release: %s received; exiting", signal.Signals(received).name)
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

    worker = sub.add_parser(
        "worker",
        help="a worker pool's processes (Dramatiq), stopping gracefully",
        description="Run the worker processes of a pool: `conveyor worker system --processes 2 "
        "--threads 8`. The arguments after the pool go to Dramatiq's CLI. A stop (SIGTERM or "
        "SIGINT, to the main process, its worker processes or both, repeated or not) lets "
        "running jobs finish for CONVEYOR_WORKER_DRAIN_SECONDS, then hands back the rest.",
    )
    worker.add_argument(
        "pool", help="a pool (`system`), or the dotted module of a pool of your own"
    )
    worker.add_argument(
        "dramatiq_args", nargs=argparse.REMAINDER, help="passed on to `dramatiq` (--processes …)"
    )
    worker.set_defaults(run=cmd_worker)

    release = sub.add_parser(
        "release",
        help="the Procfile's release step: upgrade the database, then exit or stay idle",
        description="Upgrade the database schema. Then exit, as a platform's release phase "
        "expects; under a local Procfile runner (honcho, foreman, overmind), which "
        "stops every process when one exits, stay idle until stopped.",
    )
    when = release.add_mutually_exclusive_group()
    when.add_argument("--idle", action="store_true", help="stay idle after the upgrade")
    when.add_argument("--exit", action="store_true", help="exit after the upgrade")
    release.set_defaults(run=cmd_release)

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
