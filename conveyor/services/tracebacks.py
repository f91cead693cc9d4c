"""The traceback stored with a failed attempt: the job's own frames, bounded, without secrets.

A job's owner reads it over the API, so it shows what the job's code raised and where, and
nothing of the worker around it: the frames of the worker's machinery that called the job
(the lifecycle, the registry, the job loop, asyncio and concurrent.futures) are left out,
and the values of the server's secret settings (its key, the passwords in its URLs) are
masked wherever they appear. A long traceback keeps its end, where the exception is, and
says what was cut.
"""

from __future__ import annotations

import traceback
import types
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from conveyor.settings import Settings

#: Modules of the frames that lead into the job's function, left out of its traceback
#: (pydantic: the worker validates the payload before the function runs).
MACHINERY = (
    "conveyor.workers.",
    "conveyor.registry",
    "conveyor.aio",
    "concurrent.futures",
    "asyncio.",
    "pydantic.",
    "pydantic_core",
)
#: What a secret is replaced with.
MASK = "***"
#: Secrets shorter than this are not masked (they would mask ordinary words).
MIN_SECRET = 4


def _secrets_of(settings: Settings) -> tuple[str, ...]:
    found: set[str] = set()
    if settings.secret_key is not None:
        found.add(settings.secret_key.get_secret_value())
    for url in (settings.database_url, settings.broker_url, settings.redis_url):
        if not url:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found.update({password, unquote(password)})
    # Longest first, so a secret that contains another is masked whole.
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET), key=len, reverse=True))


def _own_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """`tb` without its leading frames of the machinery that called the job's function."""
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if not isinstance(module, str) or not module.startswith(MACHINERY):
            break
        tb = tb.tb_next
    return tb


def cut(text: str, max_bytes: int) -> str:
    """`text` within `max_bytes` of UTF-8: its end, after a line saying how much was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    note = "[… {} earlier bytes of this traceback cut …]\n"
    room = max_bytes - len(note.format(len(data)).encode())
    kept = data[len(data) - room :]
    # Start on a whole line (and a whole character) where one begins soon enough.
    newline = kept.find(b"\n", 0, 200)
    if newline != -1:
        kept = kept[newline + 1 :]
    text = kept.decode("utf-8", "ignore")
    return note.format(len(data) - len(kept)) + text


@dataclass(frozen=True)
class Tracebacks:
    """Formats the tracebacks of failed attempts (see the module docstring)."""

    max_bytes: int
    secrets: tuple[str, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> Tracebacks:
        return cls(settings.max_traceback_bytes, _secrets_of(settings))

    def format(self, exc: BaseException) -> str | None:
        """`exc`'s traceback (and those of the exceptions it chains) as Python prints it,
        from the job's function on, masked and bounded; None when it has nothing to show
        but the error itself (raised by the worker, not in the job's code, as a payload that
        no longer validates)."""
        own = _own_frames(exc.__traceback__)
        if own is None and exc.__cause__ is None and exc.__context__ is None:
            return None
        lines: Iterable[str] = traceback.TracebackException(
            type(exc), exc, own, compact=True
        ).format()
        return cut(self.mask("".join(lines)), self.max_bytes)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text.replace("\x00", "")
