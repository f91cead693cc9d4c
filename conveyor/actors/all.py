"""Imports every actor module, so `JOBS` holds every job type (web, scheduler, dev)."""

from __future__ import annotations

from conveyor.actors import notifications, system

__all__ = ["notifications", "system"]
