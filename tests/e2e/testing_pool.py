"""`dramatiq tests.e2e.testing_pool`: the system pool with the test-only job types too."""

from __future__ import annotations

import tests.jobs  # noqa: F401  (test-only job types, on the system queue)
from conveyor.actors import system  # noqa: F401
from conveyor.workers.boot import boot_pool

broker = boot_pool({"system"})
