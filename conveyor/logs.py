"""Logging set-up for every entry point, with context (request id, job id) from contextvars."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
import threading
import time
import weakref
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)


class _ContextFilter(logging.Filter):
    """Adds the request id and job id of the context, unless the line names its own (a
    sweeper's line about one job passes `extra={"job_id": ...}`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id.get()
        return True


def job_fields(job: object) -> dict[str, str]:
    """`extra` for a log line about one job, outside the job's own context: its id as the
    `job_id` field of JSON lines (and in the text line's context)."""
    return {"job_id": str(job)}


#: The attributes every LogRecord has: anything else on a record came from `extra`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "job_id",
}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context's ids, each field
    a line passed in `extra`, and the traceback (`exc_info`) if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "job_id"):
            if value := getattr(record, key, None):
                entry[key] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={value}"
            for key in ("request_id", "job_id")
            if (value := getattr(record, key, None))
        )
        return f"{line} [{context}]" if context else line


#: The WARNING an `Outage` logs when its dependency stops answering (a process's sweeper,
#: consumers or heartbeat retry; the CLI, which does not, says what happens instead).
UNREACHABLE = "%s unreachable: %r; retrying quietly until it answers"


class Outage:
    """Whether one dependency answers this process, said in two lines: a WARNING when it
    starts failing and an INFO when it answers again. The failed attempts in between are
    only counted (`attempts`, for a metric), however often the process retries.

    Thread-safe. `succeeded` costs one attribute read while the dependency is up.
    """

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self.name = name
        self._logger = logger
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._attempts_before = 0
        #: Failed attempts since the process started (every one, in and out of outages).
        self.attempts = 0
        #: Outages seen since the process started.
        self.outages = 0
        _OUTAGES.add(self)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, exc: BaseException) -> None:
        """An attempt to reach it failed; the first failure of an outage is logged."""
        with self._lock:
            self.attempts += 1
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self._attempts_before = self.attempts - 1
            self.outages += 1
        self._logger.warning(UNREACHABLE, self.name, exc)

    def succeeded(self) -> None:
        """An attempt to reach it worked; the first success after an outage is logged."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted = time.monotonic() - self._down_since
            failed = self.attempts - self._attempts_before
            self._down_since = None
        self._logger.info(
            "%s reachable again after %.1f s (%d failed attempts)", self.name, lasted, failed
        )


#: The outages of this process, so the log filter knows when one is being reported.
_OUTAGES: weakref.WeakSet[Outage] = weakref.WeakSet()

#: Dramatiq's consumer threads log these on every reconnect attempt (every 3 s); the
#: connection error at CRITICAL, though the consumer reconnects by itself.
_CONSUMER_LOGGERS = "dramatiq.worker."
_RECONNECT_MESSAGES = (
    "Consumer encountered a connection error",
    "Restarting consumer in",
    "Failed to post_process_message(",
)
#: A reconnect line within this many seconds of the previous one repeats it.
REPEAT_SECONDS = 15.0


class _QuietReconnects(logging.Filter):
    """Dramatiq's reconnect lines: dropped while a Conveyor `Outage` reports the outage
    (its WARNING said it first); otherwise the first one passes, as a WARNING, and those
    that follow it within `REPEAT_SECONDS` of each other are dropped. With `debug`, the
    dropped ones pass as DEBUG lines instead."""

    def __init__(self, *, debug: bool) -> None:
        super().__init__()
        self._debug = debug
        self._last = -REPEAT_SECONDS

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_CONSUMER_LOGGERS) or not isinstance(record.msg, str):
            return True
        if not record.msg.startswith(_RECONNECT_MESSAGES):
            return True
        now, last = time.monotonic(), self._last
        self._last = now
        if any(outage.down for outage in list(_OUTAGES)) or now - last < REPEAT_SECONDS:
            if not self._debug:
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        elif record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once per process: JSON lines or readable text on stderr.

    Broker outages are logged by Conveyor once (see `Outage`): pika's own lines (about seven
    ERROR lines and a traceback per failed connection, each failure also raised to its
    caller) show only at DEBUG, and Dramatiq's consumer reconnect lines are thinned out.
    """
    debug = logging.getLevelName(level.upper()) == logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.addFilter(_QuietReconnects(debug=debug))
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
        _log_what_would_print(logging.getLogger("conveyor.uncaught"))
    else:
        handler.setFormatter(
            _TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pika").setLevel(logging.WARNING if debug else logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _log_what_would_print(logger: logging.Logger) -> None:
    """In JSON mode every line is JSON: warnings, and exceptions nobody caught (in the main
    thread or another), go through logging instead of printing to stderr."""
    logging.captureWarnings(True)

    def uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        logger.critical("uncaught exception", exc_info=(kind, exc, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "?"
        logger.error(
            "uncaught exception in thread %s",
            name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
