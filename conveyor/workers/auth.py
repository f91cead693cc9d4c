"""`dramatiq conveyor.workers.auth`: the auth pool (account emails, the purge of expired
tokens), with its mailer as a resource."""

from __future__ import annotations

from conveyor.actors import auth  # the pool's job types and resources
from conveyor.errors import ConfigurationError
from conveyor.notifications.resources import config_error
from conveyor.settings import get_settings
from conveyor.workers.boot import boot_pool

if (_error := config_error(get_settings())) is not None:
    raise ConfigurationError(_error)
broker = boot_pool({"auth"}, resources=auth.resources())
