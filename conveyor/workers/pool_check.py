"""Imported by each worker process of `conveyor worker`, right after the pool's entry module
(Dramatiq imports its extra modules after the broker's): a module that never called
`boot_pool` is no pool (`conveyor worker os.path` would start, take no job and serve nothing),
so the process stops at once with one line saying so, and Dramatiq's with it.
"""

from __future__ import annotations

import logging
import sys

from conveyor.logs import configure_logging
from conveyor.settings import get_settings
from conveyor.workers import boot, runner

logger = logging.getLogger(__name__)

#: Dramatiq's exit status for a module that cannot be imported.
NOT_A_POOL = 2

if boot.booted_pool is None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)  # Dramatiq moved stderr
    logger.error(
        "%s is not a worker pool: it never called conveyor.workers.boot.boot_pool (a pool's "
        "entry module imports its job modules and calls boot_pool)",
        runner.running_module or "the module given to conveyor worker",
    )
    sys.exit(NOT_A_POOL)
