"""What the `conveyor` command prints: tables, JSON, and one-line errors with a hint.

Every command that lists things prints a table for people, or JSON with `--json` for
scripts, through `show`; every failure is a `CommandError`, printed by `conveyor.cli.main`
as one line on stderr, `conveyor: <what went wrong>; <what to do>`, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

#: A cell longer than this is cut (with …) in a table; JSON is never cut.
MAX_CELL = 60


class CommandError(Exception):
    """A command failed for a reason a person can act on: what went wrong, and a hint."""

    def __init__(self, message: str, hint: str | None = None, *, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status


def cell(value: Any, limit: int | None = MAX_CELL) -> str:
    """A value as a table shows it: times in UTC to the second, empty for None, cut past
    `limit` characters."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, default=str)
    text = " ".join(str(value).split())
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], out: TextIO | None = None
) -> None:
    """`rows` as an aligned text table with a header of `columns` (their keys)."""
    out = out or sys.stdout
    cells = [[cell(row.get(name)) for name in columns] for row in rows]
    widths = [max([len(name)] + [len(r[i]) for r in cells]) for i, name in enumerate(columns)]
    lines = [[name.upper() for name in columns], *cells]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, enum.Enum)):
        return str(value.value if isinstance(value, enum.Enum) else value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def as_json(value: Any, out: TextIO | None = None) -> None:
    """`value` as indented JSON (times as RFC 3339, ids as strings)."""
    print(json.dumps(value, indent=2, default=_jsonable), file=out or sys.stdout)


def show(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    json_output: bool,
    empty: str = "nothing found",
    out: TextIO | None = None,
) -> None:
    """The rows as JSON (every key) with `json_output`, else as a table of `columns` (or
    `empty`, on stderr, when there are none)."""
    if json_output:
        as_json(list(rows), out)
    elif rows:
        table(rows, columns, out)
    else:
        print(empty, file=sys.stderr)


def fields(record: Mapping[str, Any], out: TextIO | None = None) -> None:
    """One record as `name: value` lines."""
    width = max((len(name) for name in record), default=0)
    for name, value in record.items():
        print(f"{name + ':':<{width + 1}} {cell(value, None)}", file=out or sys.stdout)


class _OneLine(logging.Formatter):
    """`conveyor: warning: <message>`, without the traceback a library may attach."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        return f"conveyor: {level}: {' '.join(record.getMessage().split())}"


def quiet_logging() -> None:
    """The commands' logging: warnings and errors only, each as one line on stderr (a
    process such as `conveyor web` configures its own logging instead)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # its outage lines come with traces
