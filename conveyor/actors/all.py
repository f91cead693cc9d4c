"""Imports every actor module, so `JOBS` holds every job type (web, scheduler, dev)."""

from __future__ import annotations

from conveyor.actors import auth, notifications, system

__all__ = ["auth", "notifications", "system"]
