"""Group commit of submissions: concurrent requests share one transaction.

One durable commit per job caps a web process at a few thousand submissions a second; the
batcher's thread writes whatever accumulated while the previous commit was running, so under
load many jobs share a commit, and an idle system pays no added latency.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError

from conveyor.models import Job
from conveyor.services.submissions import NewJob, Submitted

logger = logging.getLogger(__name__)

_STOP = object()


class SubmitBatcher:
    """Writes submissions in batches of up to `max_batch` on its own thread, with
    `write_many` (one transaction per batch); the `Writer` of `services.submissions`."""

    def __init__(
        self, write_many: Callable[[Sequence[NewJob]], list[Job]], *, max_batch: int = 256
    ) -> None:
        self.write_many = write_many
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[NewJob, Future[Submitted]] | object] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="conveyor-submit", daemon=True)
        self._thread.start()

    def write(self, new: NewJob) -> Future[Submitted]:
        """The job, once committed (or the error that prevented it)."""
        future: Future[Submitted] = Future()
        if self._closed:  # nobody would ever settle it
            future.set_exception(RuntimeError("the submission batcher is closed"))
        else:
            self._queue.put((new, future))
        return future

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            try:
                self._write(batch)  # type: ignore[arg-type]
            except Exception:  # never let the thread die: every later submission would hang
                logger.exception("submission batch failed")

    def _write(self, batch: list[tuple[NewJob, Future[Submitted]]]) -> None:
        # A request that went away (its future cancelled) is written all the same: an extra
        # job is safer than one the client may believe was accepted.
        try:
            created = self.write_many([new for new, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                logger.warning("could not write a submission: %r", exc)
                with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                    batch[0][1].set_exception(exc)
                return
            # One bad submission must not fail the others: write them one by one.
            for item in batch:
                self._write([item])
            return
        for (_, future), job in zip(batch, created, strict=True):
            with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                future.set_result(Submitted(job, True))
