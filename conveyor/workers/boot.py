"""Builds a worker process: its container, the broker, the lifecycle middleware, a pool's
actors. The pool's entry module imports its own job modules and calls `boot_pool`.

In a worker process forked by the `dramatiq` CLI (as `conveyor worker` runs it), only the
first stop signal stops: a process manager that signals the whole process group (honcho,
foreman, some platforms) makes the child receive SIGTERM twice, from the manager and from
Dramatiq's main process, and Dramatiq's own handler kills the process at the second one.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

import dramatiq

from conveyor.bootstrap import Container, ProcessRole, ResourceFactory
from conveyor.logs import configure_logging
from conveyor.registry import JOBS
from conveyor.settings import Settings, get_settings
from conveyor.workers import exposition
from conveyor.workers.lifecycle import install_lifecycle

logger = logging.getLogger(__name__)

#: The pool this process booted, once `boot_pool` ran: `conveyor worker` refuses to go on in a
#: process whose pool module never set it (`conveyor.workers.pool_check`).
booted_pool: str | None = None


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
    (default: its queues, sorted and joined by commas)."""
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
    lifecycle = install_lifecycle(
        broker,
        container,
        queues=queues,
        close_container=True,
        pool=pool,
        on_beat=mirror.update if mirror else None,
    )
    guard_stop_signals(on_stop=lifecycle.stop_taking_messages)
    if metrics_dir is not None:
        broker.add_middleware(exposition.WorkerExposition(metrics_dir))
    logger.debug("pool %s serves %s", sorted(queues), sorted(served))
    global booted_pool
    booted_pool = pool
    return broker


SignalHandler = Callable[[int, FrameType | None], Any]
#: The signals Dramatiq's worker process stops at (SIGHUP: its main process is reloading).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def guard_stop_signals(on_stop: Callable[[], object] | None = None) -> None:
    """In a worker process of the `dramatiq` CLI, let only the first stop signal through to
    Dramatiq's handler (which stops the worker gracefully), after `on_stop`; later ones are
    logged and ignored. SIGKILL (and SIGQUIT, which Python leaves to its default) still stop
    at once."""
    if threading.current_thread() is not threading.main_thread():
        return
    stopping = threading.Event()
    for sig in STOP_SIGNALS:
        handler = signal.getsignal(sig)
        if callable(handler) and getattr(handler, "__module__", None) == "dramatiq.cli":
            signal.signal(sig, first_signal_only(handler, stopping, on_stop))


def first_signal_only(
    handler: SignalHandler,
    stopping: threading.Event,
    on_stop: Callable[[], object] | None = None,
) -> SignalHandler:
    """`on_stop` then `handler` for the first signal (of those sharing `stopping`); a warning
    for the rest."""

    def guarded(signum: int, frame: FrameType | None) -> Any:
        if stopping.is_set():
            logger.warning(
                "%s received while stopping: ignored; running jobs finish or are handed back "
                "within the drain time (SIGKILL or SIGQUIT stops at once)",
                signal.Signals(signum).name,
            )
            return None
        stopping.set()
        if on_stop is not None:
            on_stop()
        return handler(signum, frame)

    return guarded
