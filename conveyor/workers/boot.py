"""Builds a worker process: its container, the broker, the lifecycle middleware, a pool's
actors. The pool's entry module imports its own job modules and calls `boot_pool`."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import dramatiq

from conveyor.bootstrap import Container, ProcessRole, ResourceFactory
from conveyor.logs import configure_logging
from conveyor.registry import JOBS
from conveyor.settings import Settings, get_settings
from conveyor.workers import exposition
from conveyor.workers.lifecycle import install_lifecycle

logger = logging.getLogger(__name__)


def boot_pool(
    queues: set[str],
    *,
    resources: Mapping[str, ResourceFactory] | None = None,
    settings: Settings | None = None,
    pool: str | None = None,
) -> dramatiq.Broker:
    """Set up this process to serve `queues` (with the job types imported so far) and return
    the broker the `dramatiq` CLI uses. `resources` are the named resources the pool's jobs
    reach as `ctx.resource(name)`; like everything else they are built on first use. `pool`
    names the pool in the worker registry, the metrics and `CONVEYOR_WORKER_METRICS_PORTS`
    (default: its queues, joined by commas)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    served = {t.name for t in JOBS if t.queue in queues}
    if not served:
        raise RuntimeError(f"no job type serves {sorted(queues)}: import the pool's job modules")
    pool = pool or ",".join(sorted(queues))
    metrics_dir = exposition.prepare(settings, pool)  # before the container makes any metric
    container = Container(settings, ProcessRole.WORKER, resources=resources)
    broker = container.broker
    dramatiq.set_broker(broker)
    mirror = exposition.ProcessMirror(container.metrics.registry) if metrics_dir else None
    install_lifecycle(
        broker,
        container,
        queues=queues,
        close_container=True,
        pool=pool,
        on_beat=mirror.update if mirror else None,
    )
    if metrics_dir is not None:
        broker.add_middleware(exposition.WorkerExposition(metrics_dir))
    logger.debug("pool %s serves %s", sorted(queues), sorted(served))
    return broker
