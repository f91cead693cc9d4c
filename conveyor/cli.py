"""The `conveyor` command: dev, web, db, users, tokens."""

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
