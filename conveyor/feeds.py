"""Jobs watched by the web process: one feed per job reads its changes once for every event
stream and waiting request on it.

A feed listens on the job's announcements. After each wake-up it reads, in one database
session, the new events (while streams follow the job) and the row (while requests wait on it
and its status may have changed), and hands both to its subscribers: three hundred streams on
a job cost one read per event, not three hundred. It keeps only the events that some stream
has not sent yet (at most `RETAINED_EVENTS`); a stream further behind reads the database
itself. A feed ends when its last subscriber leaves, or once it has read the job's end.

A database that is unavailable is waited out: feeds and streams read again after a pause, and
the outage is logged once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.announcements import UNKNOWN, Announcements, Notices
from conveyor.errors import TooManyRequestsError
from conveyor.logs import job_fields
from conveyor.models import Job, JobEvent, JobEventKind
from conveyor.models.job import FINISHED
from conveyor.services import jobs

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors of a database that is down or restarting: waited out.
UNAVAILABLE = (OperationalError, InterfaceError)
#: Pauses before reading again from a database that is unavailable (the last one repeats).
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)
#: Events a feed keeps for streams that have not sent them yet.
RETAINED_EVENTS = 500
#: Events read at once (a stream's history; a feed that has more to catch up).
EVENTS_PAGE = 500
#: `Retry-After` of a stream refused because its user has too many open.
STREAM_RETRY_AFTER_SECONDS = 5


def retry_delay(failures: int) -> float:
    """The pause after `failures` failed reads in a row."""
    return RETRY_DELAYS[min(failures, len(RETRY_DELAYS)) - 1]


@dataclass(frozen=True, slots=True)
class Event:
    """A job event as streams send it, encoded once."""

    id: int
    data: bytes  #: the server-sent event
    final: bool  #: the job's final status: nothing follows


def encode(job_id: uuid.UUID, event: JobEvent) -> Event:
    data = {
        "job_id": str(job_id),
        "kind": event.kind,
        "status": event.status,
        "attempt": event.attempt,
        "progress": event.progress,
        "message": event.message,
        "traceback": event.traceback,
        "at": event.at.isoformat(),
    }
    text = f"id: {event.id}\nevent: {event.kind}\ndata: {json.dumps(data)}\n\n"
    return Event(
        event.id, text.encode(), event.kind == JobEventKind.STATUS and event.status in FINISHED
    )


class Cursor:
    """Where a stream is: the id of the last event it sent."""

    __slots__ = ("at",)

    def __init__(self, at: int) -> None:
        self.at = at


class Feeds:
    """The web process's feeds, by job, and its open event streams, by user."""

    def __init__(
        self, db: sessionmaker[Session], executor: Executor, announcements: Announcements
    ) -> None:
        self.db = db
        self.executor = executor
        self.announcements = announcements
        self._feeds: dict[uuid.UUID, JobFeed] = {}
        self._streams: dict[uuid.UUID, int] = {}
        self._unavailable = False  # the last read failed (logged once per outage)

    def __len__(self) -> int:
        return len(self._feeds)

    def feed(self, job_id: uuid.UUID) -> JobFeed | None:
        return self._feeds.get(job_id)

    def open_streams(self, user_id: uuid.UUID) -> int:
        return self._streams.get(user_id, 0)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(db, *args, **kwargs)` on the database threads. An unavailable database raises
        as usual; it is logged once per outage, as is its return."""
        call = functools.partial(fn, self.db, *args, **kwargs)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, call)
        except UNAVAILABLE as exc:
            if not self._unavailable:
                self._unavailable = True
                logger.warning(
                    "database unavailable (%r): event streams and waiting requests read again "
                    "until it answers",
                    exc,
                )
            raise
        if self._unavailable:
            self._unavailable = False
            logger.info("database available again: event streams and waiting requests go on")
        return result

    @contextlib.asynccontextmanager
    async def streaming(self, user_id: uuid.UUID, *, limit: int) -> AsyncIterator[None]:
        """Count an open event stream of the user; TooManyRequestsError past `limit`."""
        count = self._streams.get(user_id, 0)
        if count >= limit:
            raise TooManyRequestsError(
                f"this user has {count} open event streams, the most allowed: close one, or "
                "retry later",
                retry_after=STREAM_RETRY_AFTER_SECONDS,
                errors=[{"field": "Authorization", "message": "too many open event streams"}],
            )
        self._streams[user_id] = count + 1
        try:
            yield
        finally:
            left = self._streams[user_id] - 1
            if left:
                self._streams[user_id] = left
            else:
                del self._streams[user_id]

    @contextlib.asynccontextmanager
    async def following(self, job_id: uuid.UUID, cursor: Cursor) -> AsyncIterator[JobFeed]:
        """The job's feed, for a stream whose position is `cursor`."""
        feed = self._join(job_id)
        feed.add_stream(cursor)
        try:
            yield feed
        finally:
            feed.remove_stream(cursor)
            self._leave(feed)

    @contextlib.asynccontextmanager
    async def watching(self, job_id: uuid.UUID) -> AsyncIterator[JobFeed]:
        """The job's feed, for a request that waits on its row."""
        feed = self._join(job_id)
        feed.waiters += 1
        try:
            yield feed
        finally:
            feed.waiters -= 1
            self._leave(feed)

    def _join(self, job_id: uuid.UUID) -> JobFeed:
        feed = self._feeds.get(job_id)
        if feed is None or feed.failed:
            feed = self._feeds[job_id] = JobFeed(job_id, self)
        return feed

    def _leave(self, feed: JobFeed) -> None:
        if feed.waiters or feed.streams:
            return
        feed.stop()
        if self._feeds.get(feed.job_id) is feed:
            del self._feeds[feed.job_id]


class JobFeed:
    """One job's changes, read once for every stream and waiting request on it."""

    def __init__(self, job_id: uuid.UUID, feeds: Feeds) -> None:
        self.job_id = job_id
        self._feeds = feeds
        #: The row as last read, and the number of the read that gave it.
        self.job: Job | None = None
        self.row_read = 0
        #: The job's final row was read: nothing will change any more. (Streams see the end
        #: in the events: a feed that only they follow stops with them.)
        self.finished = False
        #: The feed stopped on an unexpected error (logged); its subscribers manage alone.
        self.failed = False
        self.waiters = 0
        self._cursors: set[Cursor] = set()
        #: While streams follow the job: every event with `floor` < id <= `last`, oldest first.
        self.events: list[Event] = []
        self.floor: int | None = None
        self.last = 0
        self._following = 0  # counts the times streams began to follow (a read of an older
        #                      period of following is not applied)
        self._reads = 0
        self._want_row = False
        self._notices: Notices | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"conveyor-feed-{job_id}")

    @property
    def streams(self) -> int:
        return len(self._cursors)

    # --- for waiting requests -------------------------------------------------------------

    def refresh(self) -> int:
        """Ask for a read of the row that starts from now on; its number, for `row_since`
        (0 once the job has ended: the row is then final)."""
        if self.finished:
            return 0
        self._want_row = True
        self._poke()
        return self._reads + 1

    def row_since(self, read: int) -> Job | None:
        """The row, if read number `read` or a later one gave it."""
        return self.job if self.row_read >= read else None

    # --- for streams ----------------------------------------------------------------------

    def add_stream(self, cursor: Cursor) -> None:
        self._cursors.add(cursor)
        if self.floor is None:
            self._poke()  # begin to follow the events

    def remove_stream(self, cursor: Cursor) -> None:
        self._cursors.discard(cursor)
        if not self._cursors:  # nobody follows the events: forget them
            self.events, self.floor, self.last = [], None, 0
            self._following += 1

    def since(self, after: int) -> list[Event] | None:
        """The events after id `after`, oldest first; None when the feed does not hold them
        all (it does not follow the events yet, or `after` is older than what it keeps): the
        stream then reads the database."""
        if self.floor is None or after < self.floor:
            return None
        return self.events[bisect.bisect_right(self.events, after, key=_event_id) :]

    # --- for both -------------------------------------------------------------------------

    async def changed(self, within: float) -> bool:
        """Wait until the feed has read something new (or ended); False after `within`
        seconds."""
        changed = self._changed
        try:
            async with asyncio.timeout(within):
                await changed.wait()
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        self._task.cancel()

    # --- the reading task -----------------------------------------------------------------

    def _poke(self) -> None:
        """Read soon (a read already under way may have begun before what asks for it)."""
        if self._notices is not None:
            self._notices.put(UNKNOWN)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self) -> None:
        try:
            async with self._feeds.announcements.listen(self.job_id) as notices:
                self._notices = notices
                statuses = {UNKNOWN}
                while True:
                    await self._refresh(statuses)
                    if self.finished:
                        return
                    statuses = await notices.take()
        except Exception:  # the subscribers read the database themselves
            logger.exception(
                "the feed of job %s stopped", self.job_id, extra=job_fields(self.job_id)
            )
            self.failed = True
        finally:
            self._notices = None
            self._notify()

    async def _refresh(self, statuses: set[str]) -> None:
        """Read what the announced `statuses` may have changed, until it is read (waiting
        out an unavailable database), and wake the subscribers."""
        failures = 0
        while True:
            known = self.job.status if self.job is not None else None
            with_job = self.waiters > 0 and (
                self._want_row or known is None or any(s != known for s in statuses)
            )
            following = self._following
            follow = bool(self._cursors)
            after = self.last if follow and self.floor is not None else None
            if not (with_job or follow):
                return
            self._reads += 1
            read = self._reads
            if with_job:
                self._want_row = False
            try:
                changes = await self._feeds.call(
                    jobs.changes,
                    self.job_id,
                    with_job=with_job,
                    after=after,
                    newest=follow and after is None,
                    limit=EVENTS_PAGE,
                )
            except UNAVAILABLE:
                self._want_row = self._want_row or with_job
                failures += 1
                await asyncio.sleep(retry_delay(failures))
                continue
            failures = 0
            if with_job:
                self.job, self.row_read = changes.job, read
                if changes.job is None or changes.job.status in FINISHED:
                    self.finished = True
            more = False
            if follow and self._following == following and self._cursors:
                ended = self._add_events(changes, after)
                more = len(changes.events) == EVENTS_PAGE
                if ended and self.waiters and not self.finished:  # their final row, too
                    self._want_row = more = True
            if self.finished or not more:
                self._notify()
                return
            self._notify()  # streams send what is read while the rest is read
            statuses = set()

    def _add_events(self, changes: jobs.Changes, after: int | None) -> bool:
        """Keep the events read; True if the job's final status is among them."""
        if after is None:
            self.floor = self.last = changes.newest
            return False
        new = [encode(self.job_id, event) for event in changes.events]
        self.events.extend(new)
        self.last = changes.newest
        # Keep what some stream has not sent yet, and no more than RETAINED_EVENTS of it.
        slowest = min(cursor.at for cursor in self._cursors)
        drop = max(
            bisect.bisect_right(self.events, slowest, key=_event_id),
            len(self.events) - RETAINED_EVENTS,
        )
        if drop > 0:
            self.floor = self.events[drop - 1].id
            del self.events[:drop]
        return any(event.final for event in new)


def _event_id(event: Event) -> int:
    return event.id
