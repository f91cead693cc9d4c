"""`dramatiq conveyor.workers.system`: the system pool (diagnostic jobs)."""

from __future__ import annotations

from conveyor.actors import system  # noqa: F401  (the pool's job types)
from conveyor.workers.boot import boot_pool

broker = boot_pool({"system"})
