"""The `conveyor` command: run the processes, migrate the database, manage users, tokens,
signing keys and jobs, see the workers and queues."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import getpass
import logging
import math
import secrets
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import sqlalchemy.exc
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from conveyor import __version__, bootstrap
from conveyor.console import CommandError, as_json, fields, quiet_logging, show
from conveyor.errors import ConveyorError
from conveyor.models import Role, User
from conveyor.settings import Settings, get_settings

Command = Callable[[argparse.Namespace, Settings], int]
UPGRADE_HINT = "run `conveyor db upgrade` (with the same CONVEYOR_DATABASE_URL)"
DATABASE_URL_HINT = "use postgresql+psycopg://user:password@host:5432/name or sqlite:///path"
#: The shortest lifetime `tokens issue --days` gives a token: one minute.
MIN_TOKEN_DAYS = 1 / 1440
#: How many jobs one call of a bulk operation changes (the CLI calls again until done).
BULK_LIMIT = 10_000


# --- shared by the commands ---------------------------------------------------------------


def _container(settings: Settings) -> bootstrap.Container:
    return bootstrap.Container(settings, bootstrap.ProcessRole.CLI)


def safe_url(url: str) -> str:
    """A database URL fit to print: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(an unparsable CONVEYOR_DATABASE_URL)"


@contextlib.contextmanager
def opened(settings: Settings, *, migrated: bool = True) -> Iterator[bootstrap.Container]:
    """The CLI's container, closed after the command; with `migrated`, the database must be
    at the revision this code needs (else a CommandError saying to upgrade), or ahead of it
    (a newer release's revision: a one-line warning, and the command runs)."""
    from conveyor.models.migrate import SchemaBehindError, SchemaCheck

    with _container(settings) as container:
        if migrated:
            try:
                SchemaCheck(container.db)()
            except SchemaBehindError as exc:
                raise CommandError(str(exc), UPGRADE_HINT) from None
        yield container


class _Unreachable(logging.Filter):
    """Holds back the broker's "unreachable; retrying quietly" WARNING, which is true of a
    process that retries, not of the CLI: `_publishing` says what happens instead."""

    def __init__(self) -> None:
        super().__init__()
        self.error: object = None

    def filter(self, record: logging.LogRecord) -> bool:
        from conveyor.logs import UNREACHABLE

        if record.msg is UNREACHABLE and isinstance(record.args, tuple) and record.args:
            if record.args[0] == "broker":
                self.error = record.args[-1]
                return False
        return True


@contextlib.contextmanager
def _publishing(container: bootstrap.Container) -> Iterator[None]:
    """Around a command that publishes jobs: when the broker did not take them, one
    warning that says what happens to them (they are saved; the sweeper publishes them)."""
    held = _Unreachable()
    broker_logger = logging.getLogger("conveyor.broker")
    broker_logger.addFilter(held)
    try:
        yield
    finally:
        broker_logger.removeFilter(held)
    if held.error is not None:
        print(
            f"conveyor: warning: the broker is unreachable ({held.error!r}): the job(s) are "
            "saved as queued, and the sweeper of a running `conveyor web` publishes them once "
            "the broker answers; this command does not retry",
            file=sys.stderr,
        )


def operator() -> User:
    """Who the CLI acts as: an admin named after the local account and host (for events and
    logs); never stored."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return User(
        id=uuid.UUID(int=0),
        email=f"cli:{name}@{socket.gethostname()}",
        role=Role.ADMIN.value,
        active=True,
    )


def job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a job id") from None


def when(value: str) -> dt.datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or a date."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time: give 2030-01-31 or 2030-01-31T09:00:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def count(value: str) -> int:
    """A number of rows to show: 1 to 10,000."""
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 10_000):
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number from 1 to 10000")
    return int(value)


def port(value: str) -> int:
    """A TCP port: 0 (any free port) to 65535."""
    if not (value.isascii() and value.isdigit() and int(value) <= 65535):
        raise argparse.ArgumentTypeError(
            f"{value!r}: give a port from 0 to 65535 (0: any free port)"
        )
    return int(value)


def positive_days(value: str) -> float:
    """A number of days, at least one minute's worth (the upper bound is a setting, checked
    by the command)."""
    try:
        days = float(value)
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and days >= MIN_TOKEN_DAYS):
        raise argparse.ArgumentTypeError(
            f"{value!r}: give a number of days from {MIN_TOKEN_DAYS:.6f} (one minute) up to "
            "CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS, such as 7"
        )
    return days


def _listening(host: str, port: int, exc: OSError, *, dev: bool = False) -> CommandError:
    """A server that could not listen on host:port, said in one line (`dev`: for `conveyor
    dev`, whose only port option is --port)."""
    where = f"{host}:{port}"
    ports = "--port (`make dev PORT=…`)" if dev else "--port or CONVEYOR_PORT"
    hosts = "--host" if dev else "--host or CONVEYOR_HOST"
    if isinstance(exc, socket.gaierror):
        return CommandError(
            f"cannot listen on {where}: {host!r} is not an address or a known host name",
            f"give an address such as 127.0.0.1 or 0.0.0.0 with {hosts}",
        )
    if exc.errno == errno.EADDRINUSE:
        return CommandError(
            f"cannot listen on {where}: address already in use",
            f"pick another with {ports} (0: any free port)",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return CommandError(
            f"cannot listen on {where}: permission denied",
            f"ports below 1024 need privileges: pick another with {ports}",
        )
    reason = exc.strerror or str(exc)
    return CommandError(
        f"cannot listen on {where}: {reason[:1].lower() + reason[1:]}",
        f"check {hosts} and {ports}",
    )


# --- dev, web, db ---------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.dev import run_dev
    from conveyor.http.server import ListenError

    try:
        return run_dev(settings, host=args.host, port=args.port)
    except ListenError as exc:
        raise _listening(exc.host, exc.port, exc.error, dev=True) from None


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    import conveyor.actors.all  # noqa: F401  (every job type, to validate submissions)
    from conveyor.http.app import create_app
    from conveyor.http.server import ListenError, serve
    from conveyor.logs import configure_logging
    from conveyor.services.auth import TokenConfig

    configure_logging(settings.log_level, settings.log_format)
    TokenConfig.of(settings)  # refuse to start without a key that signs tokens
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    container = bootstrap.Container(settings, bootstrap.ProcessRole.WEB)
    try:
        asyncio.run(serve(create_app(container), settings, host, port, shutdown_timeout=10))
    except ListenError as exc:
        raise _listening(exc.host, exc.port, exc.error) from None
    finally:
        container.close()
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.workers.runner import run_pool

    # Checked here, once: a worker process would only log that the database is unreachable
    # and keep retrying a URL that can never work.
    make_url(settings.database_url)  # an unparseable URL: ArgumentError, said by `main`
    if (error := _driver_error(settings)) is not None:
        raise error
    if args.pool in (
        "notifications",
        "conveyor.workers.notifications",
        "auth",
        "conveyor.workers.auth",
    ):
        from conveyor.notifications.resources import config_error

        if (problem := config_error(settings)) is not None:
            raise CommandError(problem)
    return run_pool(args.pool, args.dramatiq_args, settings)


def cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    import logging
    import signal

    from conveyor.logs import configure_logging
    from conveyor.models.migrate import SchemaAheadError
    from conveyor.settings import local_procfile_runner

    configure_logging(settings.log_level, settings.log_format)
    logger = logging.getLogger("conveyor.release")
    try:
        before, after = _upgrade(settings, "head")
    except SchemaAheadError as exc:  # a rollback deploy: the newer schema stays, and serves
        logger.warning("release: %s; left as it is", exc)
    else:
        logger.info("release: database schema at the newest revision (%s, was %s)", after, before)
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


def _upgrade(settings: Settings, revision: str) -> tuple[str | None, str | None]:
    """`migrate.upgrade`, with Alembic's refusals as a CommandError (SchemaAheadError is the
    caller's to handle)."""
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError as AlembicError

    from conveyor.models.migrate import upgrade

    try:
        return upgrade(settings.database_url, revision)
    except (AlembicError, RevisionError) as exc:
        reason = " ".join(str(exc).split())
        raise CommandError(reason, "`conveyor db history` lists the revisions") from None


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.models.migrate import SchemaAheadError

    try:
        before, after = _upgrade(settings, args.revision)
    except SchemaAheadError as exc:
        print(f"{exc}; nothing to do (a newer Conveyor migrated it)")
        return 0
    if before == after:
        print(f"database already at revision {after or 'none'}; nothing to do")
    else:
        print(f"database upgraded from revision {before or 'none (empty)'} to {after}")
    return 0


def cmd_db_current(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.models.migrate import current, head, is_ahead

    found, newest = current(settings.database_url), head()
    if found == newest:
        print(f"{found} (head)")
        return 0
    if is_ahead(found):
        print(f"{found} (ahead of this code: the newest revision it knows is {newest})")
        return 0
    print(f"{found or 'none'} (behind: this code needs {newest}; run `conveyor db upgrade`)")
    return 3


def cmd_db_history(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.models.migrate import head, history

    newest = head()
    for revision in history():
        title = revision.message.splitlines()[0] if revision.message else ""
        mark = "  (head)" if revision.id == newest else ""
        print(f"{revision.id}  {title}{mark}")
    return 0


# --- users and tokens -----------------------------------------------------------------------


USER_COLUMNS = ("email", "role", "active", "created_at", "id")


def _user_row(user: User) -> dict[str, Any]:
    return {name: getattr(user, name) for name in USER_COLUMNS}


def _stdin_password() -> str:
    """A password read from standard input (its first line), never from the command line."""
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services.accounts import create_verified

    password = _stdin_password() if args.password_stdin else None
    with opened(settings) as container:
        user = create_verified(container.db, args.email, Role(args.role), password)
    print(f"user: {user.email}\nid: {user.id}\nrole: {user.role}")
    print(f"next: conveyor tokens issue {user.email}")
    return 0


def cmd_users_password(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services.accounts import set_password

    password = _stdin_password()
    with opened(settings) as container:
        user = set_password(container.db, args.email, password)
    print(f"password set for {user.email}; every session of the account is ended")
    return 0


def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services.accounts import SYSTEM_EMAIL
    from conveyor.services.users import list_users

    with opened(settings) as container:
        users = list_users(container.db, role=Role(args.role) if args.role else None)
    people = [u for u in users if u.email != SYSTEM_EMAIL]  # the auth pool's, no one's
    show([_user_row(u) for u in people], USER_COLUMNS, json_output=args.json, empty="no users")
    return 0


def _update_user(settings: Settings, email: str, **change: Any) -> User:
    """Apply an admin's change to the user of `email` as the API does (`users.update`, with
    its audit events and rules), the operator at the command line acting."""
    from conveyor.services.users import get_by_email, update

    with opened(settings) as container:
        user = get_by_email(container.db, email)
        return update(container.db, None, user.id, **change)


def cmd_users_active(args: argparse.Namespace, settings: Settings) -> int:
    user = _update_user(settings, args.email, active=args.active)
    if args.active:
        print(f"{user.email} is active again; they need new tokens (the old ones stay refused)")
    else:
        print(
            f"{user.email} is deactivated: their sessions are ended, and web processes refuse "
            "their tokens within 10 s"
        )
    return 0


def cmd_users_role(args: argparse.Namespace, settings: Settings) -> int:
    user = _update_user(settings, args.email, role=Role(args.role))
    print(f"{user.email} is now {user.role} (web processes notice within 10 s)")
    return 0


BOUNCE_COLUMNS = ("channel", "address", "reason", "created_at", "id")


def cmd_bounces_list(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services import notifications
    from conveyor.services.cursors import Cursors

    with opened(settings) as container:
        cursors = Cursors(secrets.token_bytes(32))  # one page: its cursor is not shown
        page = notifications.list_bounces(
            container.db,
            cursors,
            channels=[args.channel] if args.channel else (),
            address=args.address,
            limit=args.limit,
        )
    rows = [{name: getattr(b, name) for name in BOUNCE_COLUMNS} for b in page.items]
    show(rows, BOUNCE_COLUMNS, json_output=args.json, empty="no bounced addresses")
    return 0


def cmd_bounces_clear(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services import notifications

    with opened(settings) as container:
        notifications.clear_bounced_address(container.db, args.address, args.channel)
    print(f"{args.address} is off the {args.channel} bounce list: its deliveries are sent again")
    return 0


AUDIT_COLUMNS = ("at", "action", "actor_id", "subject_id", "ip", "details")


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services import audit
    from conveyor.services.cursors import Cursors

    with opened(settings) as container:
        cursors = Cursors(secrets.token_bytes(32))  # one page: its cursor is not shown
        page = audit.list_events(container.db, cursors, actions=args.action or (), limit=args.limit)
    rows = [{name: getattr(e, name) for name in AUDIT_COLUMNS} for e in page.items]
    show(rows, AUDIT_COLUMNS, json_output=args.json, empty="no audit events")
    return 0


def cmd_tokens_issue(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services.auth import TokenConfig, issue_token
    from conveyor.services.users import get_by_email

    config = TokenConfig.of(settings)
    ttl = None
    if args.days is not None:
        most = settings.token_max_lifetime_seconds / 86400
        if args.days > most:
            raise CommandError(
                f"--days {args.days:g} is longer than tokens may live: give from "
                f"{MIN_TOKEN_DAYS:.6f} (one minute) to {most:g} days",
                "or raise CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS",
            )
        ttl = dt.timedelta(days=args.days)
    with opened(settings) as container:
        user = get_by_email(container.db, args.email)
    if not user.active:
        raise CommandError(
            f"{user.email} is deactivated: a token would be refused",
            f"run `conveyor users activate {user.email}`",
        )
    token = issue_token(config, user.id, ttl=ttl)
    print(token)
    if sys.stdout.isatty():
        print(f"\nuse it as: curl -H 'Authorization: Bearer {token}' …", file=sys.stderr)
    return 0


def cmd_keys_generate(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.security.signing import SigningKey

    key = SigningKey.generate(args.alg)
    sys.stdout.write(key.private_pem().decode())
    print(f"kid {key.kid} ({key.alg})", file=sys.stderr)
    return 0


def cmd_keys_export_derived(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.security.signing import SigningKey

    if settings.secret_key is None:
        raise CommandError(
            "CONVEYOR_SECRET_KEY is not set: there is no derived key to export",
            "run it with the settings of the web processes",
        )
    key = SigningKey.derived(settings.secret_key.get_secret_value())
    sys.stdout.write(key.private_pem().decode())
    print(f"kid {key.kid} ({key.alg})", file=sys.stderr)
    return 0


# --- workers and queues ---------------------------------------------------------------------


def _age(seconds: float) -> str:
    """`45s`, `12m`, `3h`, `2d`: whole units, two of the next smaller before switching."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.models.base import utcnow
    from conveyor.services import workers

    timeout = dt.timedelta(seconds=settings.worker_timeout_seconds)
    with opened(settings) as container:
        alive = workers.alive(container.db, timeout)
    now = utcnow()
    rows = [
        {
            "id": w.id,
            "pool": w.pool,
            "host": w.host,
            "pid": w.pid,
            "queues": w.queues,
            "threads": w.threads,
            "jobs_in_hand": w.jobs_in_hand,
            "started_at": w.started_at,
            "last_heartbeat_at": w.last_heartbeat_at,
        }
        for w in alive
    ]
    if args.json:
        as_json(rows)
        return 0
    for row, w in zip(rows, alive, strict=True):
        row["jobs"] = w.jobs_in_hand
        row["last_heartbeat"] = _age((now - w.last_heartbeat_at).total_seconds()) + " ago"
        row["up_for"] = _age((now - w.started_at).total_seconds())
    columns = ("pool", "host", "pid", "threads", "jobs", "last_heartbeat", "up_for")
    show(rows, columns, json_output=False, empty="no live worker processes")
    return 0


def cmd_queues(args: argparse.Namespace, settings: Settings) -> int:
    import conveyor.actors.all  # noqa: F401  (every job type, so every queue is listed)
    from conveyor.models.base import utcnow
    from conveyor.registry import JOBS
    from conveyor.services import queues

    timeout = dt.timedelta(seconds=settings.worker_timeout_seconds)
    with opened(settings) as container:
        found = queues.stats(
            container.db, {t.queue for t in JOBS}, failed=True, workers_within=timeout
        )
    rows = [
        {
            "queue": q.queue,
            "waiting": q.waiting,
            "scheduled": q.scheduled,
            "running": q.running,
            "failed": q.failed or 0,
            "oldest_waiting_seconds": round(q.oldest_waiting_seconds, 3),
            "paused": q.paused,
            "paused_at": q.paused_at,
            "pause_reason": q.pause_reason,
            "consumers": q.consumers or 0,
            "consumer_threads": q.consumer_threads or 0,
        }
        for q in found
    ]
    if args.json:
        as_json(rows)
        return 0
    now = utcnow()
    for row, q in zip(rows, found, strict=True):
        row["oldest_waiting"] = _age(q.oldest_waiting_seconds) if q.waiting else "-"
        row["paused"] = f"for {_age((now - q.paused_at).total_seconds())}" if q.paused_at else "-"
    columns = (
        "queue",
        "waiting",
        "scheduled",
        "running",
        "failed",
        "oldest_waiting",
        "consumers",
        "paused",
    )
    show(rows, columns, json_output=False, empty="no queues")
    return 0


def cmd_errors(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.models.base import utcnow
    from conveyor.services import error_groups

    with opened(settings) as container:
        found = error_groups.groups(container.db, limit=args.limit)
    rows = [
        {
            "type": g.job_type,
            "error_type": g.error_type,
            "count": g.count,
            "first_seen": g.first_seen,
            "last_seen": g.last_seen,
            "sample_job_id": str(g.sample_id),
            "message": g.message,
        }
        for g in found
    ]
    if args.json:
        as_json(rows)
        return 0
    now = utcnow()
    for row, g in zip(rows, found, strict=True):
        row["error_type"] = g.error_type or "-"
        row["last_seen"] = _age((now - g.last_seen).total_seconds()) + " ago"
        row["first_seen"] = _age((now - g.first_seen).total_seconds()) + " ago"
    columns = ("type", "error_type", "count", "last_seen", "first_seen", "sample_job_id")
    show(rows, columns, json_output=False, empty="no failed jobs")
    return 0


def cmd_queues_pause(args: argparse.Namespace, settings: Settings) -> int:
    import conveyor.actors.all  # noqa: F401  (every job type: a queue no type uses is refused)
    from conveyor.services import queue_pauses

    with opened(settings) as container:
        queue_pauses.check_known(container.db, container.registry, args.queue)
        paused = queue_pauses.pause(container.db, args.queue, operator(), args.reason)
    if paused:
        print(f"queue {args.queue}: paused; its workers take none of its jobs until resumed")
    else:
        print(f"queue {args.queue}: paused already")
    return 0


def cmd_queues_resume(args: argparse.Namespace, settings: Settings) -> int:
    import conveyor.actors.all  # noqa: F401  (every job type: a queue no type uses is refused)
    from conveyor.services import queue_pauses

    with opened(settings) as container, _publishing(container):
        queue_pauses.check_known(container.db, container.registry, args.queue)
        if args.queue not in queue_pauses.paused(container.db):
            print(f"queue {args.queue}: not paused")
            return 0
        published = queue_pauses.resume(container.db, container.enqueuer, args.queue, operator())
    print(f"queue {args.queue}: resumed; {published} waiting job(s) published again")
    return 0


# --- jobs -----------------------------------------------------------------------------------


JOB_COLUMNS = ("id", "type", "queue", "status", "attempts", "created_at", "finished_at")


def _job_out(job: Any) -> dict[str, Any]:
    """A job as `--json` prints it in a list: as the API lists it."""
    from conveyor.http.schemas import JobItem

    return JobItem.of(job, ()).model_dump(mode="json", exclude={"payload", "result", "omitted"})


def _job_filter(args: argparse.Namespace, db: Any) -> Any:
    from conveyor.services.operations import JobFilter, owner_id_of

    return JobFilter(
        statuses=tuple(args.status or ()),
        types=tuple(args.type or ()),
        queues=tuple(args.queue or ()),
        owner_id=owner_id_of(db, args.owner) if args.owner else None,
        created_before=args.created_before,
        created_after=args.created_after,
    )


def cmd_jobs_list(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services.operations import find

    with opened(settings) as container:
        found = find(container.db, operator(), _job_filter(args, container.db), limit=args.limit)
    if args.json:
        rows = [_job_out(job) for job in found]
    else:
        rows = [{name: getattr(job, name) for name in JOB_COLUMNS} for job in found]
    show(rows, JOB_COLUMNS, json_output=args.json, empty="no jobs match")
    return 0


def cmd_jobs_show(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.http.schemas import JobOut
    from conveyor.services import jobs, operations

    with opened(settings) as container:
        job = jobs.get(container.db, args.id, operator())
        events = operations.last_events(container.db, args.id, args.events)
    out = JobOut.of(job).model_dump()
    history = [
        {
            "id": e.id,
            "at": e.at,
            "kind": e.kind,
            "status": e.status,
            "attempt": e.attempt,
            "message": e.message,
        }
        for e in events
    ]
    if args.json:
        as_json({**out, "events": history})
        return 0
    content = ("error", "payload", "result")
    record = {k: v for k, v in out.items() if k not in content}
    error = dict(out["error"] or {})
    traceback = error.pop("traceback", None)
    shown = {"error": error or None, "payload": out["payload"], "result": out["result"]}
    fields(record | {k: v for k, v in shown.items() if v is not None})
    if traceback:
        print(f"\ntraceback:\n{traceback.rstrip()}")
    print()
    show(history, ("at", "status", "attempt", "message"), json_output=False, empty="no events")
    return 0


def _bulk(args: argparse.Namespace) -> bool:
    given = [args.status, args.type, args.queue, args.owner, args.created_before]
    if args.id is not None:
        if any(given) or args.created_after:
            raise CommandError("give a job id or filters, not both", "see --help")
        return False
    if not (any(given) or args.created_after):
        raise CommandError(
            "give a job id, or at least one filter",
            "--status, --type, --queue, --owner, --created-before or --created-after",
        )
    return True


def cmd_jobs_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services import jobs, operations

    with opened(settings) as container:
        if not _bulk(args):
            job = jobs.cancel(container.db, container.announcements, args.id, operator())
            state = "asked to stop" if job.status == "running" else job.status
            print(f"job {job.id}: {state}")
            return 0
        where = _job_filter(args, container.db)
        cancelled = stopping = 0
        while True:
            result = operations.bulk_cancel(
                container.db, container.announcements, operator(), where, limit=BULK_LIMIT
            )
            cancelled += result.count - result.stopping
            stopping += result.stopping
            if not result.more:
                break
    print(f"cancelled {cancelled} job(s); asked {stopping} running job(s) to stop")
    return 0


def cmd_jobs_retry(args: argparse.Namespace, settings: Settings) -> int:
    import conveyor.actors.all  # noqa: F401  (every job type: a retry renews its type's retries)
    from conveyor.services import operations

    with opened(settings) as container, _publishing(container):
        common = (container.db, container.enqueuer, container.announcements, container.registry)
        if not _bulk(args):
            job = operations.retry(*common, args.id, operator())
            print(f"job {job.id}: {job.status} again (attempt {job.attempts + 1} is next)")
            return 0
        where = _job_filter(args, container.db)
        retried = skipped = 0
        while True:
            result = operations.bulk_retry(*common, operator(), where, limit=BULK_LIMIT)
            retried += result.count
            # Each call scans the matching jobs from the first: those of unknown types, left
            # as they were, are met again by every call. The last call (which went through to
            # the end) met each of them once.
            skipped = result.skipped
            if not result.more:
                break
    print(f"retried {retried} job(s)")
    if skipped:
        print(f"left {skipped} job(s) of job types this code does not know", file=sys.stderr)
    return 0


def cmd_jobs_purge(args: argparse.Namespace, settings: Settings) -> int:
    from conveyor.services import operations

    cancelled = 0
    with opened(settings) as container:
        while True:  # a bounded number per call, as over the API
            result = operations.purge_queue(
                container.db, container.announcements, operator(), args.queue
            )
            cancelled += result.count
            if not result.more:
                break
    print(f"queue {args.queue}: cancelled {cancelled} waiting job(s)")
    return 0


# --- the parser -----------------------------------------------------------------------------


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line on stderr, pointing at --help (exit 2, as argparse)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def _command(
    sub: Any, name: str, help_: str, run: Command | None, *examples: str, description: str = ""
) -> argparse.ArgumentParser:
    """A sub-command with its one-line help, a description and examples in its --help."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_,
        description=description or help_[:1].upper() + help_[1:] + ".",
        epilog=_examples(*examples) if examples else None,
        formatter_class=_Formatter,
    )
    if run is not None:
        parser.set_defaults(run=run)
    return parser


def _group(sub: Any, name: str, help_: str, *examples: str) -> Any:
    parser = _command(sub, name, help_, None, *examples)
    return parser.add_subparsers(dest=name, required=True, metavar="COMMAND")


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _filters(parser: argparse.ArgumentParser) -> None:
    from conveyor.models import JobStatus

    statuses = [s.value for s in JobStatus]
    parser.add_argument("--status", action="append", choices=statuses, help="repeatable")
    parser.add_argument("--type", action="append", metavar="TYPE", help="repeatable")
    parser.add_argument("--queue", action="append", metavar="QUEUE", help="repeatable")
    parser.add_argument("--owner", metavar="EMAIL|ID", help="only this user's jobs")
    parser.add_argument("--created-before", type=when, metavar="TIME", help="ISO 8601, UTC")
    parser.add_argument("--created-after", type=when, metavar="TIME", help="ISO 8601, UTC")


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="conveyor",
        description=__doc__,
        epilog=_examples(
            "conveyor dev                       # everything in one process",
            "conveyor db upgrade && conveyor web",
            "conveyor jobs list --status failed",
            "conveyor <command> --help          # more on each command",
        ),
        formatter_class=_Formatter,
    )
    root.add_argument("--version", action="version", version=f"conveyor {__version__}")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _dev_and_web(sub)
    _worker_and_release(sub)
    _db(sub)
    _users(sub)
    _tokens(sub)
    _keys(sub)
    _jobs(sub)
    _workers_and_queues(sub)
    _bounces(sub)
    _audit(sub)
    return root


def _audit(sub: Any) -> None:
    audit = _command(
        sub,
        "audit",
        "read the audit log (security events), newest first",
        cmd_audit,
        "conveyor audit",
        "conveyor audit --action login_failed --action lockout --json",
    )
    audit.add_argument("--action", action="append", metavar="ACTION", help="repeatable")
    audit.add_argument("--limit", type=int, default=100, help="at most so many (100)")
    _json_flag(audit)


def _bounces(sub: Any) -> None:
    from conveyor.notifications.channels import CHANNELS

    bounces = _group(
        sub,
        "bounces",
        "addresses a provider rejected for good (their deliveries are suppressed)",
        "conveyor bounces list",
        "conveyor bounces clear ada@example.com",
    )
    listing = _command(
        bounces,
        "list",
        "list bounced addresses, newest first",
        cmd_bounces_list,
        "conveyor bounces list",
        "conveyor bounces list --address ada@example.com --json",
    )
    listing.add_argument("--channel", choices=list(CHANNELS))
    listing.add_argument("--address")
    listing.add_argument("--limit", type=int, default=100, help="at most so many (100)")
    _json_flag(listing)
    clear = _command(
        bounces,
        "clear",
        "take an address off the bounce list",
        cmd_bounces_clear,
        "conveyor bounces clear ada@example.com",
        description="Take an address off the bounce list: its later deliveries are sent again.",
    )
    clear.add_argument("address")
    clear.add_argument("--channel", choices=list(CHANNELS), default="email")


def _dev_and_web(sub: Any) -> None:
    dev = _command(
        sub,
        "dev",
        "everything in one process, no servers needed",
        cmd_dev,
        "conveyor dev",
        "conveyor dev --port 0             # a free port",
        description="The API, a worker pool and the sweeper in one process, on SQLite and an "
        "in-process broker under CONVEYOR_DATA_DIR. For trying Conveyor out.",
    )
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=port, default=8000, help="0 to 65535; 0 picks a free port")

    web = _command(
        sub,
        "web",
        "the HTTP API (and the outbox sweeper)",
        cmd_web,
        "conveyor web",
        "CONVEYOR_PORT=9000 conveyor web --host 0.0.0.0",
    )
    web.add_argument("--host", default=None, help="default: CONVEYOR_HOST")
    web.add_argument(
        "--port",
        type=port,
        default=None,
        help="0 to 65535 (0: any free port); default: CONVEYOR_PORT",
    )


def _worker_and_release(sub: Any) -> None:
    worker = _command(
        sub,
        "worker",
        "a worker pool's processes (Dramatiq), stopping gracefully",
        cmd_worker,
        "conveyor worker system --processes 2 --threads 8",
        "conveyor worker mycompany.pools.billing --threads 4   # a pool of your own",
        description="Run the worker processes of a pool. The arguments after the pool go to "
        "Dramatiq's CLI. A stop (SIGTERM or SIGINT, to the main process, its worker processes "
        "or both, repeated or not) lets running jobs finish for CONVEYOR_WORKER_DRAIN_SECONDS, "
        "then hands back the rest.",
    )
    worker.add_argument(
        "pool", help="a pool (`system`), or the dotted module of a pool of your own"
    )
    worker.add_argument(
        "dramatiq_args", nargs=argparse.REMAINDER, help="passed on to `dramatiq` (--processes …)"
    )

    release = _command(
        sub,
        "release",
        "the Procfile's release step: upgrade the database, then exit or stay idle",
        cmd_release,
        "conveyor release                   # exit, or idle under honcho/foreman/overmind",
        "conveyor release --exit",
        description="Upgrade the database schema. Then exit, as a platform's release phase "
        "expects; under a local Procfile runner (honcho, foreman, overmind), which "
        "stops every process when one exits, stay idle until stopped.",
    )
    when = release.add_mutually_exclusive_group()
    when.add_argument("--idle", action="store_true", help="stay idle after the upgrade")
    when.add_argument("--exit", action="store_true", help="exit after the upgrade")


def _db(sub: Any) -> None:
    db = _group(sub, "db", "database schema", "conveyor db upgrade", "conveyor db current")
    up = _command(
        db,
        "upgrade",
        "apply migrations",
        cmd_db_upgrade,
        "conveyor db upgrade",
        "conveyor db upgrade 0002          # stop at that revision",
        description="Apply the migrations up to REVISION (the newest by default) and say "
        "from which revision to which; a database already there is left as it is.",
    )
    up.add_argument("revision", nargs="?", default="head")
    _command(
        db,
        "current",
        "print the database's revision",
        cmd_db_current,
        "conveyor db current",
        description="Print the revision the database is at; exit 3 when it is behind this "
        "code (run `conveyor db upgrade`), 0 when it is at its head or ahead of it (a revision "
        "of a newer Conveyor, which this code runs on).",
    )
    _command(db, "history", "list the migrations", cmd_db_history, "conveyor db history")


def _users(sub: Any) -> None:
    roles = [r.value for r in Role]
    users = _group(sub, "users", "accounts", "conveyor users list", "conveyor users --help")
    create = _command(
        users,
        "create",
        "create a user",
        cmd_users_create,
        "conveyor users create alice@example.com",
        "conveyor users create ops@example.com --role admin",
    )
    create.add_argument("email")
    create.add_argument("--role", choices=roles, default=Role.MEMBER.value)
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the account's password from standard input (else it signs in otherwise)",
    )
    password = _command(
        users,
        "password",
        "set a user's password (read from standard input); their sessions end",
        cmd_users_password,
        "conveyor users password alice@example.com < new-password.txt",
    )
    password.add_argument("email")

    listing = _command(
        users,
        "list",
        "list users",
        cmd_users_list,
        "conveyor users list",
        "conveyor users list --role admin --json",
    )
    listing.add_argument("--role", choices=roles)
    _json_flag(listing)

    deactivate = _command(
        users,
        "deactivate",
        "refuse a user's tokens",
        cmd_users_active,
        "conveyor users deactivate alice@example.com",
        description="Deactivate a user: their sessions end, and every web process refuses "
        "their tokens within 10 s (its user cache). Their jobs stay as they are. The last "
        "active admin cannot be deactivated. Audited like the API's change.",
    )
    deactivate.add_argument("email")
    deactivate.set_defaults(active=False)
    activate = _command(
        users,
        "activate",
        "let a deactivated user sign in again (old tokens stay refused)",
        cmd_users_active,
        "conveyor users activate alice@example.com",
    )
    activate.add_argument("email")
    activate.set_defaults(active=True)

    role = _command(
        users,
        "role",
        "make a user an admin or a member",
        cmd_users_role,
        "conveyor users role alice@example.com admin",
    )
    role.add_argument("email")
    role.add_argument("role", choices=roles)


def _tokens(sub: Any) -> None:
    tokens = _group(sub, "tokens", "API tokens", "conveyor tokens issue alice@example.com")
    issue = _command(
        tokens,
        "issue",
        "print a bearer token for a user",
        cmd_tokens_issue,
        "conveyor tokens issue alice@example.com",
        "conveyor tokens issue alice@example.com --days 7",
    )
    issue.add_argument("email")
    issue.add_argument(
        "--days",
        type=positive_days,
        default=None,
        help="lifetime in days, one minute (0.000694) or more (default: "
        "CONVEYOR_TOKEN_TTL_SECONDS; at most CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS)",
    )


def _keys(sub: Any) -> None:
    from conveyor.security.signing import ALGORITHMS

    keys = _group(sub, "keys", "keys that sign API tokens", "conveyor keys generate > jwt.pem")
    generate = _command(
        keys,
        "generate",
        "print a new private key (PEM) that can sign API tokens",
        cmd_keys_generate,
        "conveyor keys generate > jwt-2025-06.pem",
        "conveyor keys generate --alg RS256 > jwt-rsa.pem",
        description="Print a new private key as PEM on stdout, and its kid (RFC 7638 "
        "thumbprint) on stderr. List its file in CONVEYOR_JWT_PUBLIC_KEYS, then first in "
        "CONVEYOR_JWT_PRIVATE_KEYS: see docs/signing-keys.md. Keep it private (chmod 600).",
    )
    generate.add_argument(
        "--alg", choices=ALGORITHMS, default="EdDSA", help="EdDSA (Ed25519, the default) or RS256"
    )
    _command(
        keys,
        "export-derived",
        "print the key derived from CONVEYOR_SECRET_KEY (PEM), to move to key files",
        cmd_keys_export_derived,
        "conveyor keys export-derived > jwt-derived.pem",
        description="Print the Ed25519 key that signs while no CONVEYOR_JWT_PRIVATE_KEYS is "
        "set (derived from CONVEYOR_SECRET_KEY) as PEM on stdout, and its kid on stderr. "
        "Listed first in CONVEYOR_JWT_PRIVATE_KEYS, it signs as before, so no token is "
        "refused; then rotate as docs/signing-keys.md says. Keep it private (chmod 600).",
    )


def _jobs(sub: Any) -> None:
    jobs = _group(
        sub,
        "jobs",
        "find, inspect, cancel, retry and purge jobs (as an admin)",
        "conveyor jobs list --status failed",
        "conveyor jobs retry --status failed --type report.generate",
    )
    listing = _command(
        jobs,
        "list",
        "list jobs, newest first",
        cmd_jobs_list,
        "conveyor jobs list",
        "conveyor jobs list --status failed --queue reports --limit 100",
        "conveyor jobs list --owner alice@example.com --created-after 2030-01-01 --json",
    )
    _filters(listing)
    listing.add_argument("--limit", type=count, default=20, help="1 to 10000 (default 20)")
    _json_flag(listing)

    show_ = _command(
        jobs,
        "show",
        "a job with its error, payload, result and events",
        cmd_jobs_show,
        "conveyor jobs show 01a20d7c-4d7b-7c3e-9b2a-6f0e8d1c2b3a",
    )
    show_.add_argument("id", type=job_id)
    show_.add_argument(
        "--events", type=count, default=50, help="the newest events shown (default 50)"
    )
    _json_flag(show_)

    cancel = _command(
        jobs,
        "cancel",
        "cancel a job, or every job that matches filters",
        cmd_jobs_cancel,
        "conveyor jobs cancel 01a20d7c-4d7b-7c3e-9b2a-6f0e8d1c2b3a",
        "conveyor jobs cancel --status queued --type report.generate",
        description="Cancel one job, or (with filters instead of an id) every job that "
        "matches: waiting jobs at once, running ones are asked to stop.",
    )
    cancel.add_argument("id", type=job_id, nargs="?")
    _filters(cancel)

    retry = _command(
        jobs,
        "retry",
        "retry a failed or cancelled job, or every one that matches filters",
        cmd_jobs_retry,
        "conveyor jobs retry 01a20d7c-4d7b-7c3e-9b2a-6f0e8d1c2b3a",
        "conveyor jobs retry --status failed --created-after 2030-01-31T09:00",
        description="Give a failed or cancelled job a new attempt cycle (same id; its "
        "retries renewed), or (with filters instead of an id) every such job that matches.",
    )
    retry.add_argument("id", type=job_id, nargs="?")
    _filters(retry)

    purge = _command(
        jobs,
        "purge",
        "cancel every waiting job of a queue",
        cmd_jobs_purge,
        "conveyor jobs purge reports",
        description="Cancel every scheduled, queued and retrying job of QUEUE; running jobs "
        "go on. Workers skip the messages left on the broker.",
    )
    purge.add_argument("queue")


def _workers_and_queues(sub: Any) -> None:
    workers = _command(
        sub,
        "workers",
        "live worker processes: pool, host, pid, threads, jobs in hand, last heartbeat",
        cmd_workers,
        "conveyor workers",
        "conveyor workers --json | jq '.[] | select(.pool == \"system\")'",
        description="The worker processes that recorded a heartbeat within "
        "CONVEYOR_WORKER_TIMEOUT_SECONDS (each records itself every "
        "CONVEYOR_WORKER_HEARTBEAT_SECONDS, and removes itself when it stops cleanly). JOBS is "
        "the jobs each runs now.",
    )
    _json_flag(workers)
    queues = _command(
        sub,
        "queues",
        "per queue: waiting, scheduled, running, failed, oldest waiting, consumers, paused",
        cmd_queues,
        "conveyor queues",
        "conveyor queues --json",
        "conveyor queues pause reports --reason 'database maintenance'",
        "conveyor queues resume reports",
        description="Per queue, from the database (the same on RabbitMQ and Redis): WAITING "
        "jobs a worker may start now (queued, or retrying and due), SCHEDULED ones (delayed, or "
        "retrying later), RUNNING and FAILED ones, how long the OLDEST WAITING job has "
        "been due, the live worker processes that consume it (CONSUMERS), and for how long it "
        "has been PAUSED. `pause` and `resume` stop and restart a queue's workers taking jobs.",
    )
    _json_flag(queues)
    errors = _command(
        sub,
        "errors",
        "failed jobs grouped by job type and error type: count, last and first seen, a sample",
        cmd_errors,
        "conveyor errors",
        "conveyor errors --json | jq '.[] | select(.count > 100)'",
        description="The failed jobs, grouped by job type and ERROR TYPE (the exception's "
        "class), the most recently seen first: how many, when the newest and the oldest "
        "failed, and the newest job's id (`conveyor jobs show ID` has its traceback). Retry "
        "or discard a group with POST /v1/errors/retry or /v1/errors/discard.",
    )
    errors.add_argument("--limit", type=count, default=100, help="at most so many groups (100)")
    _json_flag(errors)
    actions = queues.add_subparsers(dest="queues", required=False, metavar="COMMAND")
    pause = _command(
        actions,
        "pause",
        "pause a queue: its workers take none of its jobs (submissions still land)",
        cmd_queues_pause,
        "conveyor queues pause reports --reason 'database maintenance'",
        description="Pause QUEUE: its workers take none of its jobs, which wait (submissions "
        "are still accepted) until `conveyor queues resume`; jobs already running finish.",
    )
    pause.add_argument("queue")
    pause.add_argument("--reason", help="why (kept with the pause and in the audit log)")
    resume = _command(
        actions,
        "resume",
        "resume a paused queue: its waiting jobs are published again at once",
        cmd_queues_resume,
        "conveyor queues resume reports",
    )
    resume.add_argument("queue")


# --- errors, and main -----------------------------------------------------------------------


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = "_".join(str(part) for part in first["loc"]).upper()
        variable = f"CONVEYOR_{name}" if name else "a CONVEYOR_ setting"
        raise CommandError(
            f"bad setting {variable}: {first['msg']}",
            f"fix or unset {variable} (in the environment or .env)",
        ) from None


def _database_error(exc: sqlalchemy.exc.DBAPIError, settings: Settings) -> CommandError:
    from conveyor.errors import is_infrastructure_error

    reason = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc) else "error"
    url = safe_url(settings.database_url)
    if isinstance(exc, sqlalchemy.exc.OperationalError) or is_infrastructure_error(exc):
        hint = "is it running? check CONVEYOR_DATABASE_URL"
        if "does not exist" in reason:
            hint = "create it (createdb), or check CONVEYOR_DATABASE_URL"
        return CommandError(f"cannot reach the database at {url}: {reason}", hint)
    if isinstance(exc, sqlalchemy.exc.ProgrammingError) and "does not exist" in reason:
        return CommandError(f"the database at {url} is not migrated: {reason}", UPGRADE_HINT)
    return CommandError(f"database error at {url}: {reason}")


def _driver_error(settings: Settings | None) -> CommandError | None:
    """When CONVEYOR_DATABASE_URL names a database or driver that is not installed, the
    error that says so (None when its driver loads)."""
    if settings is None:
        return None
    url = settings.database_url
    try:
        make_url(url).get_dialect().import_dbapi()
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        scheme = url.split("://", 1)[0]
        return CommandError(
            f"bad CONVEYOR_DATABASE_URL: no driver for {scheme}:// is installed ({exc})",
            DATABASE_URL_HINT,
        )
    except Exception:
        return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.run not in (cmd_dev, cmd_web):  # those configure their own logging
        quiet_logging()
    settings: Settings | None = None
    try:
        settings = _settings()
        return int(args.run(args, settings))
    except CommandError as exc:
        error = exc
    except ConveyorError as exc:
        error = CommandError(exc.detail)
    except sqlalchemy.exc.DBAPIError as exc:
        assert settings is not None
        error = _database_error(exc, settings)
    except sqlalchemy.exc.NoSuchModuleError:
        error = _driver_error(settings) or CommandError(
            "bad CONVEYOR_DATABASE_URL: unknown database", DATABASE_URL_HINT
        )
    except sqlalchemy.exc.ArgumentError as exc:
        error = CommandError(f"bad CONVEYOR_DATABASE_URL: {exc}", DATABASE_URL_HINT)
    except ImportError:
        found = _driver_error(settings)
        if found is None:
            raise
        error = found
    except KeyboardInterrupt:
        return 130
    hint = f"; {error.hint}" if error.hint else ""
    print(f"conveyor: {error.message}{hint}", file=sys.stderr)
    return error.status


if __name__ == "__main__":
    sys.exit(main())
