"""`dramatiq conveyor.workers.notifications`: the notifications pool (email, webhook, SMS,
push), with its channels, templates and unsubscribe links as resources."""

from __future__ import annotations

from conveyor.actors import notifications  # noqa: F401  (the pool's job types)
from conveyor.notifications.resources import resources
from conveyor.workers.boot import boot_pool

broker = boot_pool({"notifications"}, resources=resources())
