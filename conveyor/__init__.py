"""Conveyor: asynchronous, message-driven jobs over HTTP."""

__version__ = "0.1.0"
