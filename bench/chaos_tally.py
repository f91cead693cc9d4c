"""The verdict of `bench/chaos.py`: every job in the database checked against what its clients
were told. Pure data in, figures out, so it is tested on its own (tests/unit/test_chaos_tally.py).

Each job the platform took on (a 202 answer, or a committed row whose answer never reached its
client) falls in at most one of lost, wrongly failed and late; re-run and duplicated are
counted across them.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

#: Statuses of a job that is not finished yet.
PENDING = frozenset({"scheduled", "queued", "running", "retrying"})


@dataclass
class Submission:
    """One job a client wanted submitted, over all its tries (a keyed POST is retried)."""

    seq: int  # unique in the run; an echo payload carries it
    job_type: str
    key: str | None  # the Idempotency-Key every try sent, if any
    job_id: uuid.UUID | None = None  # from the 202 that acknowledged it
    tries: int = 0
    connection_errors: int = 0  # tries without an answer (refused, reset, timed out)
    server_errors: int = 0  # 5xx answers
    conflicts: int = 0  # 409: the same key still in flight
    rejected: str | None = None  # another 4xx: status and detail (the request was valid)
    last_error: str | None = None  # of the last try: an HTTP status or an exception's name


@dataclass(frozen=True)
class JobRow:
    """A job's row as the run left it, with what its history says."""

    id: uuid.UUID
    job_type: str
    status: str
    attempts: int
    due: float  # epoch seconds: created_at, or run_at when that is later
    finished_at: float | None
    idempotency_key: str | None
    seq: int | None  # the echo payload's sequence number
    error_type: str | None
    succeeded_events: int


@dataclass
class Tally:
    submitted: int = 0
    accepted: int = 0  # submissions a client got a 202 for
    abandoned: int = 0  # submissions never acknowledged
    given_up: int = 0  # keyed ones among them: their retries ran out
    requests: int = 0  # POSTs sent, retries included
    connection_errors: int = 0
    server_errors: int = 0
    rejected: int = 0
    unacknowledged: int = 0  # rows whose 202 no client saw
    lost: list[str] = field(default_factory=list)
    wrongly_failed: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    rerun: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)  # finished_at - due of succeeded jobs

    @property
    def client_errors(self) -> int:
        return self.connection_errors + self.server_errors

    @property
    def delay_max(self) -> float:
        return max(self.delays, default=math.nan)

    @property
    def passed(self) -> bool:
        return not (self.lost or self.wrongly_failed or self.late or self.duplicated)


def tally(submissions: Sequence[Submission], rows: Iterable[JobRow], bound: float) -> Tally:
    """Check every acknowledged job and every row; `bound`: seconds from due to finished."""
    by_id = {row.id: row for row in rows}
    t = Tally(submitted=len(submissions))
    acknowledged: set[uuid.UUID] = set()
    for sub in submissions:
        t.requests += sub.tries
        t.connection_errors += sub.connection_errors
        t.server_errors += sub.server_errors
        t.rejected += sub.rejected is not None
        if sub.job_id is None:
            t.abandoned += 1
            t.given_up += sub.key is not None and sub.rejected is None
        else:
            t.accepted += 1
            acknowledged.add(sub.job_id)
            if sub.job_id not in by_id:
                t.lost.append(f"{sub.job_id}: acknowledged, but it has no row")
    t.unacknowledged = sum(1 for job_id in by_id if job_id not in acknowledged)

    for row in by_id.values():
        if row.status in PENDING or row.status == "cancelled":  # nobody cancels in the run
            t.lost.append(f"{row.id}: {row.status} at the end ({row.job_type})")
        elif row.status == "failed":
            t.wrongly_failed.append(f"{row.id}: failed with {row.error_type} ({row.job_type})")
        elif row.finished_at is not None:
            delay = row.finished_at - row.due
            t.delays.append(delay)
            if delay > bound:
                t.late.append(f"{row.id}: finished {delay:.1f}s after it was due")
        if row.attempts > 1:
            t.rerun.append(f"{row.id}: {row.attempts} attempts")
        if row.succeeded_events > 1:
            t.duplicated.append(f"{row.id}: {row.succeeded_events} 'succeeded' events")

    # A second row for one Idempotency-Key, or for one submission (its echo sequence number);
    # a row that is both is one duplicate.
    extra: dict[uuid.UUID, str] = {}
    for what, of in (("Idempotency-Key", _key), ("submission", _seq)):
        for name, ids in _groups(by_id.values(), of).items():
            for job_id in sorted(ids)[1:]:
                extra.setdefault(job_id, f"{job_id}: a second job for {what} {name}")
    t.duplicated.extend(extra.values())
    return t


def _key(row: JobRow) -> object:
    return row.idempotency_key


def _seq(row: JobRow) -> object:
    return row.seq


def _groups(
    rows: Iterable[JobRow], of: Callable[[JobRow], object]
) -> dict[object, list[uuid.UUID]]:
    """Rows by `of(row)` (None left out), only where more than one row shares it."""
    groups: dict[object, list[uuid.UUID]] = defaultdict(list)
    for row in rows:
        value = of(row)
        if value is not None:
            groups[value].append(row.id)
    return {name: ids for name, ids in groups.items() if len(ids) > 1}
