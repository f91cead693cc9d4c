"""Builds a worker process: broker from settings, the lifecycle middleware, a pool's actors."""

from __future__ import annotations

import logging

import dramatiq

from conveyor.broker import BrokerEnqueuer, build_broker
from conveyor.db import make_engine, make_sessionmaker
from conveyor.events import MemoryEvents, RedisEvents
from conveyor.logs import configure_logging
from conveyor.services import direct
from conveyor.settings import Settings, get_settings
from conveyor.workers.lifecycle import Resources, install_lifecycle

logger = logging.getLogger(__name__)


def worker_resources(settings: Settings, broker: dramatiq.Broker) -> Resources:
    """Database, events and publisher of one worker process (made after the process boots)."""
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    enqueuer = BrokerEnqueuer(broker, threads=1)
    if settings.redis_url:
        notifier: RedisEvents | MemoryEvents = RedisEvents(
            settings.redis_url, settings.redis_prefix
        )
    else:
        logger.warning("no redis_url: clients waiting on jobs are not woken by this worker")
        notifier = MemoryEvents()

    def close() -> None:
        if isinstance(notifier, RedisEvents):
            notifier.close_publisher()
        enqueuer.close()
        direct.close(engine)
        engine.dispose()

    return Resources(
        db=make_sessionmaker(engine), notifier=notifier, enqueuer=enqueuer, close=close
    )


def boot_pool(queues: set[str], settings: Settings | None = None) -> dramatiq.Broker:
    """Set up this process to serve `queues` and return the broker the dramatiq CLI uses."""
    import conveyor.actors.all  # noqa: F401  (fills the registry)

    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    broker = build_broker(settings.broker_url, namespace=settings.broker_namespace)
    dramatiq.set_broker(broker)
    install_lifecycle(
        broker,
        lambda: worker_resources(settings, broker),
        lease_seconds=settings.lease_seconds,
        queues=queues,
    )
    return broker
