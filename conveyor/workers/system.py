"""`dramatiq conveyor.workers.system`: the system pool (diagnostic jobs)."""

from __future__ import annotations

from conveyor.workers.boot import boot_pool

broker = boot_pool({"system"})
