"""Job types that exist only in tests (time limits, a job that ignores cancellation)."""

from __future__ import annotations

import datetime as dt
import time

from conveyor.registry import JOBS, Payload, job


class Busy(Payload):
    seconds: float = 30.0


if "testing.busy" not in JOBS:

    @job(
        queue="system",
        name="testing.busy",
        max_retries=0,
        time_limit=dt.timedelta(milliseconds=500),
    )
    def busy(payload: Busy) -> None:
        """Keep the thread busy in Python code, never checking for cancellation."""
        deadline = time.monotonic() + payload.seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
