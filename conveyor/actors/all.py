"""Imports every actor module, so `JOBS` holds every job type (web, scheduler, dev)."""

from __future__ import annotations

from conveyor.actors import system

__all__ = ["system"]
