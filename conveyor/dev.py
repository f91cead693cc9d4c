"""`conveyor dev`: the whole platform in one process, with nothing to install.

SQLite under the data directory, Dramatiq's stub broker with in-process worker threads,
in-process announcements, and the sweeper. On start it prints `url:` and `token:` lines.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import signal

import dramatiq
from aiohttp import web
from pydantic import SecretStr

from conveyor import bootstrap
from conveyor.logs import configure_logging
from conveyor.models import Role
from conveyor.models.migrate import upgrade
from conveyor.services.auth import TokenConfig, issue_token
from conveyor.services.outbox import publish_pending, requeue_unfinished
from conveyor.services.users import ensure_user
from conveyor.settings import Settings
from conveyor.workers.lifecycle import install_lifecycle

logger = logging.getLogger(__name__)

ADMIN_EMAIL = "admin@localhost"
#: Lifetime of the admin token printed at each start (a new one: restart `conveyor dev`).
ADMIN_TOKEN_TTL = dt.timedelta(hours=24)
#: How long Ctrl-C waits for running jobs before leaving them to the next start.
SHUTDOWN_GRACE_MS = 5_000


def embedded_settings(settings: Settings) -> Settings:
    """The settings with the embedded defaults: SQLite, stub broker, in-process announcements."""
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    key_file = data / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(48))
        key_file.chmod(0o600)
    return settings.model_copy(
        update={
            "database_url": f"sqlite:///{data / 'conveyor.db'}",
            "broker_url": "stub://",
            "redis_url": None,
            "secret_key": settings.secret_key or SecretStr(key_file.read_text().strip()),
        }
    )


def run_dev(settings: Settings, *, host: str, port: int) -> int:
    """Serve until interrupted; a restart keeps the jobs, and queued ones run."""
    import conveyor.actors.all  # noqa: F401  (every job type: this process runs them all)
    from conveyor.http.app import create_app

    settings = embedded_settings(settings)
    configure_logging(settings.log_level, settings.log_format)
    upgrade(settings.database_url)
    container = bootstrap.Container(settings, bootstrap.ProcessRole.DEV)
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
            asyncio.run(_serve(create_app(container), host, port, token))
        finally:
            worker.stop(timeout=SHUTDOWN_GRACE_MS)  # unfinished jobs resume at the next start
    finally:
        container.close()
    return 0


async def _serve(app: web.Application, host: str, port: int, token: str) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    print(f"url: http://{host}:{bound}", flush=True)
    print(f"token: {token}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("stopping…", flush=True)
    await runner.cleanup()
