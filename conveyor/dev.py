"""`conveyor dev`: the whole platform in one process, with nothing to install.

SQLite under the data directory, Dramatiq's stub broker with in-process worker threads,
in-process announcements, and the sweeper; email is written to `outbox/` in the data
directory. On start it prints `url:`, `token:` (an admin's API token) and `sign-in:` (a
link that signs a browser in to the dashboard as that admin, once) lines.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import dramatiq
from pydantic import HttpUrl, SecretStr

from conveyor import bootstrap
from conveyor.actors import auth as auth_actors
from conveyor.logs import configure_logging
from conveyor.models import Role
from conveyor.models.migrate import SchemaAheadError, upgrade
from conveyor.notifications import resources as notifications
from conveyor.notifications.channels import LINKS
from conveyor.services import sign_in_links
from conveyor.services.auth import TokenConfig, issue_token
from conveyor.services.outbox import publish_pending, requeue_unfinished
from conveyor.services.users import ensure_user
from conveyor.settings import Settings
from conveyor.workers.lifecycle import install_lifecycle

logger = logging.getLogger(__name__)

ADMIN_EMAIL = "admin@localhost"
#: Lifetime of the admin token printed at each start (a new one: restart `conveyor dev`).
ADMIN_TOKEN_TTL = dt.timedelta(hours=24)
DATABASE_FILE = "conveyor.db"
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
#: At Ctrl-C running jobs get CONVEYOR_WORKER_DRAIN_SECONDS to finish, and those still
#: running are handed back (they run at the next start, not counted as lost workers); this
#: bounds the wait for the worker threads after that.
SHUTDOWN_GRACE_MS = 2_000
#: How long the server drains open requests (long polls, event streams) at Ctrl-C.
SHUTDOWN_TIMEOUT_SECONDS = 60.0


def embedded_settings(settings: Settings) -> Settings:
    """The settings with the embedded defaults: SQLite, stub broker, in-process announcements.

    The data directory and its files are private to the user (0700 and 0600): they hold
    the signing keys (API tokens, webhooks) and every job's payload and result."""
    data = private_directory(settings.data_dir.resolve())
    key_file, database = data / "secret_key", data / DATABASE_FILE
    webhook_key_file = data / "webhook_secret"
    for path in (key_file, webhook_key_file):
        if not path.exists():
            private_file(path, secrets.token_urlsafe(48))
    if not database.exists():
        private_file(database)  # SQLite gives its -wal and -shm files the database's mode
    sidecars = (data / f"{DATABASE_FILE}{suffix}" for suffix in SQLITE_SIDECARS)
    for path in (key_file, webhook_key_file, database, *sidecars):
        if path.exists():  # the files of a data directory made before they were private
            path.chmod(0o600)
    return settings.model_copy(
        update={
            "database_url": f"sqlite:///{database}",
            "broker_url": "stub://",
            "redis_url": None,
            "secret_key": settings.secret_key or SecretStr(key_file.read_text().strip()),
            # Email lands as .eml files in the outbox folder, unless SMTP is asked for.
            "email_transport": "outbox"
            if "email_transport" not in settings.model_fields_set
            else settings.email_transport,
            "outbox_dir": settings.outbox_dir or data / "outbox",
            "webhook_secret": settings.webhook_secret
            or SecretStr(webhook_key_file.read_text().strip()),
        }
    )


def private_directory(path: Path) -> Path:
    """`path`, created with mode 0700, or made 0700 if others may read it (unless it is
    a shared sticky directory such as /tmp, which is left alone with a warning)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if mode & 0o077:
        if mode & stat.S_ISVTX:
            logger.warning(
                "%s is a shared directory: keep conveyor dev's data in one of its own", path
            )
        else:
            path.chmod(0o700)
    return path


def private_file(path: Path, content: str = "") -> None:
    """Create `path` holding `content`, with mode 0600 from the start: there is no moment
    when others may read it. FileExistsError if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(content)


def run_dev(settings: Settings, *, host: str, port: int) -> int:
    """Serve until interrupted; a restart keeps the jobs, and queued ones run."""
    import conveyor.actors.all  # noqa: F401  (every job type: this process runs them all)
    from conveyor.http.app import create_app
    from conveyor.http.server import serve

    settings = embedded_settings(settings)
    bound_later = settings.public_url is None and not port  # --port 0: known once it listens
    if settings.public_url is None and port:  # where the emails' unsubscribe links point
        settings = settings.model_copy(update={"public_url": HttpUrl(f"http://{host}:{port}")})
    configure_logging(settings.log_level, settings.log_format)
    try:
        upgrade(settings.database_url)
    except SchemaAheadError as exc:  # a newer Conveyor used this data directory
        logger.warning("%s; running on it as it is", exc)
    container = bootstrap.Container(
        settings,
        bootstrap.ProcessRole.DEV,
        resources={**notifications.resources(), **auth_actors.resources()},
    )
    try:
        requeue_unfinished(container.db)
        broker = container.broker
        dramatiq.set_broker(broker)
        install_lifecycle(broker, container)
        worker = dramatiq.Worker(broker, worker_threads=settings.worker_threads, worker_timeout=100)
        worker.start()
        try:
            publish_pending(
                container.db,
                container.enqueuer,
                grace=dt.timedelta(0),
                requeue_after=dt.timedelta(seconds=settings.requeue_after_seconds),
            )
            admin = ensure_user(container.db, ADMIN_EMAIL, Role.ADMIN)
            tokens = TokenConfig.of(settings)
            token = issue_token(tokens, admin.id, ttl=min(ADMIN_TOKEN_TTL, tokens.max_lifetime))
            link = sign_in_links.issue(container.db, admin.id, ADMIN_TOKEN_TTL)
            asyncio.run(
                serve(
                    create_app(container),
                    settings,
                    host,
                    port,
                    shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
                    started=_started(host, token, link, container if bound_later else None),
                    stopping=lambda: print("stopping…", flush=True),
                )
            )
        finally:
            worker.stop(timeout=SHUTDOWN_GRACE_MS)  # drains, then hands back what still runs
    finally:
        container.close()
    return 0


def _started(
    host: str, token: str, link: str, container: bootstrap.Container | None = None
) -> Callable[[int], None]:
    """Prints where it listens, the admin's token and a sign-in link (`link`'s token) for the
    dashboard; with `container`, points its unsubscribe links at the port it was given
    (`--port 0`)."""

    def started(port: int) -> None:
        if container is not None:
            container.resource(LINKS).base_url = f"http://{host}:{port}"
        print(f"url: http://{host}:{port}", flush=True)
        print(f"token: {token}", flush=True)
        print(f"sign-in: http://{host}:{port}/app/login/link?token={link}", flush=True)

    return started
