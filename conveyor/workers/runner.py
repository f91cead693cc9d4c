"""`conveyor worker <pool>`: a pool's worker processes, run by Dramatiq's CLI with Conveyor's
logging (JSON lines from every process in JSON mode) and the drain time of the settings."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence

import dramatiq.cli

from conveyor.errors import ConfigurationError
from conveyor.logs import configure_logging
from conveyor.settings import Settings

logger = logging.getLogger(__name__)

#: Modules of `conveyor.workers` that are not pools.
NOT_POOLS = frozenset(
    {"boot", "context", "exposition", "lifecycle", "pool_check", "presence", "runner"}
)
#: Imported after the pool's module in each worker process: stops it unless a pool booted.
POOL_CHECK = "conveyor.workers.pool_check"
#: The pool module this `conveyor worker` runs (for the worker processes' messages).
running_module: str | None = None
#: After the drain (run in the lifecycle middleware), how long Dramatiq waits for its threads:
#: the jobs still running were handed back and told to stop, so this is a bound, not a wait.
THREAD_WIND_DOWN_MS = 2_000


def pool_module(pool: str) -> str:
    """The entry module of `pool`: `conveyor.workers.<pool>`, or a dotted module path as
    given (a pool of your own: a module that imports its job modules and calls `boot_pool`)."""
    if "." in pool:
        module = pool
    elif pool in NOT_POOLS or pool.startswith("_"):
        raise ConfigurationError(f"{pool!r} is not a worker pool")
    else:
        module = f"conveyor.workers.{pool}"
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package that does not exist
        found = False
    if not found:
        raise ConfigurationError(f"no worker pool {pool!r}: module {module} not found")
    return module


def dramatiq_argv(pool: str, extra: Sequence[str]) -> list[str]:
    """The arguments of Dramatiq's CLI for `pool`; `extra` are passed on (and win)."""
    return [
        pool_module(pool),
        POOL_CHECK,
        "--skip-logging",
        "--worker-shutdown-timeout",
        str(THREAD_WIND_DOWN_MS),
        *extra,
    ]


def run_pool(pool: str, extra: Sequence[str], settings: Settings) -> int:
    """Run `pool`'s worker processes until stopped; Dramatiq's exit code.

    This process only starts, watches and signals the worker processes (it never imports the
    pool, so nothing is built before the fork); each worker process boots the pool, with the
    same logging."""
    global running_module
    argv = dramatiq_argv(pool, extra)
    running_module = argv[0]
    configure_logging(settings.log_level, settings.log_format)
    args = dramatiq.cli.make_argument_parser().parse_args(argv)  # type: ignore[no-untyped-call]
    logger.info(
        "worker pool %s: a stop lets running jobs finish for %gs, then hands them back",
        pool,
        settings.worker_drain_seconds,
    )
    return int(dramatiq.cli.main(args))  # type: ignore[no-untyped-call]
