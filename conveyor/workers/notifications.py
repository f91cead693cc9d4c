"""`dramatiq conveyor.workers.notifications`: the notifications pool (email, webhook, SMS,
push), with its channels, templates and unsubscribe links as resources."""

from __future__ import annotations

from conveyor.actors import notifications  # noqa: F401  (the pool's job types)
from conveyor.errors import ConfigurationError
from conveyor.notifications.resources import config_error, resources
from conveyor.settings import get_settings
from conveyor.workers.boot import boot_pool

if (_error := config_error(get_settings())) is not None:
    raise ConfigurationError(_error)
broker = boot_pool({"notifications"}, resources=resources())
