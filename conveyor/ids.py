"""Time-ordered UUIDs (version 7, RFC 9562): ids sort in creation order."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> uuid.UUID:
    """A new UUIDv7; monotonic within this process, even within one millisecond."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                ms += 1
                _counter = 0
        else:
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _last_ms = ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return uuid.UUID(int=value)


def first_uuid7_at(moment: dt.datetime) -> uuid.UUID:
    """The smallest UUIDv7 of `moment`'s millisecond: every id made at or after `moment` is
    at least this one (`id >= first_uuid7_at(t)` is a primary-key range of the rows made
    since `t`, as far as the clocks of the hosts that made them agree)."""
    ms = int(moment.timestamp() * 1000)
    return uuid.UUID(int=(ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | 0b10 << 62)
