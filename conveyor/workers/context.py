"""`ctx`: a job attempt in progress, and what its function reaches through it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from conveyor.bootstrap import Container
from conveyor.errors import (
    AttemptLostError,
    BadRequestError,
    InvalidRequestError,
    JobCancelledError,
    PermanentJobError,
)
from conveyor.models import JobStatus
from conveyor.outbound import HttpClient
from conveyor.registry import Payload
from conveyor.services import runs
from conveyor.settings import Settings

#: What is raised in a job told to stop, by why: a cancel ends it `cancelled`; an attempt that
#: no longer holds its job records nothing (see `JobLifecycle._run`).
STOP_REASONS: dict[runs.Stop, type[BaseException]] = {
    runs.Stop.CANCEL: JobCancelledError,
    runs.Stop.LOST: AttemptLostError,
}


@dataclass(eq=False)
class RunningJob:
    """One attempt of a job on one worker thread; it is the `ctx` its function receives.

    Besides the attempt's own state, it holds the way to stop it: `interrupt` sets the stop
    event (waking `ctx.sleep`) and raises the reason in the job's thread while it is in the
    job's code (the heartbeat does that on a cancel, a lost lease or a time limit).
    """

    job_id: uuid.UUID
    attempt: int
    owner_id: uuid.UUID
    parent_id: uuid.UUID | None
    container: Container = field(repr=False)
    thread_id: int = field(default_factory=threading.get_ident)
    deadline: float | None = None
    time_limit: float | None = None
    max_retries: int = 0
    worker_losses: int = 0
    handbacks: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: type[BaseException] | None = None
    in_user_code: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what the job reaches ---------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """Asked to stop: a cancel, or the time limit."""
        return self.stop.is_set()

    @property
    def settings(self) -> Settings:
        return self.container.settings

    @property
    def db(self) -> sessionmaker[Session]:
        return self.container.db

    @property
    def http(self) -> HttpClient:
        return self.container.http

    def resource(self, name: str) -> Any:
        return self.container.resource(name)

    def submit(
        self,
        job_type: str | Callable[..., Any],
        payload: Payload | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> uuid.UUID:
        """See `JobContext.submit` (`idempotency_key`, `run_at`, `delay`)."""
        self._refuse_on_the_loop("submit")
        submissions = self.container.submissions
        try:
            new = submissions.build(
                job_type, payload, owner_id=self.owner_id, parent_id=self.job_id, **options
            )
            return submissions.submit(new).job.id
        except (InvalidRequestError, BadRequestError) as exc:
            # The same call would be refused on every retry: a bug to fix, not a blip.
            raise PermanentJobError(f"the child job was refused: {exc.detail}") from exc

    async def asubmit(
        self,
        job_type: str | Callable[..., Any],
        payload: Payload | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> uuid.UUID:
        submit = functools.partial(self.submit, job_type, payload, **options)
        return await asyncio.get_running_loop().run_in_executor(None, submit)

    def _refuse_on_the_loop(self, call: str) -> None:
        """A blocking call on the job loop would stall every async job of the process."""
        if self.container.is_built("loop") and self.container.loop.in_loop:
            raise RuntimeError(f"in an async def job, use `await ctx.a{call}(...)`")

    def progress(self, fraction: float, message: str | None = None) -> None:
        self._refuse_on_the_loop("progress")
        self._progress(fraction, message)

    def _progress(self, fraction: float, message: str | None) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        # A database blip is ridden out within the lease, and past that the report is
        # dropped: progress is advisory, and never fails the job.
        lease = self.settings.lease_seconds
        stop = runs.store_progress(
            self.db, self.job_id, self.attempt, fraction, message, within=lease, wait=self._pause
        )
        if stop is not None:
            self.interrupt(STOP_REASONS[stop])
        self.container.announcements.announce(self.job_id, JobStatus.RUNNING)
        self.raise_if_stopped()

    def sleep(self, seconds: float) -> None:
        self._refuse_on_the_loop("sleep")
        self._pause(seconds)

    def _pause(self, seconds: float) -> None:
        self.stop.wait(seconds)
        self.raise_if_stopped()

    async def aprogress(self, fraction: float, message: str | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._progress, fraction, message)

    async def asleep(self, seconds: float) -> None:
        self.raise_if_stopped()
        await asyncio.sleep(seconds)  # a cancel or time limit cancels the task meanwhile
        self.raise_if_stopped()

    # --- stopping ---------------------------------------------------------------------------

    def stopping(self) -> type[BaseException] | None:
        """Why the job must stop (a cancel, a lost lease, the time limit), or None while it
        may go on."""
        return self.stop_reason if self.stop.is_set() else None

    def raise_if_stopped(self) -> None:
        if self.stop.is_set() and self.stop_reason is not None:
            raise self.stop_reason()

    def interrupt(self, reason: type[BaseException]) -> None:
        """Stop the job: wake `ctx.sleep`, and raise `reason` in its thread if it is in
        the job's code (as Dramatiq's time limits do)."""
        with self.lock:
            if self.stop.is_set():
                return
            self.stop_reason = reason
            self.stop.set()
            if self.in_user_code and self.thread_id != threading.get_ident():
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread_id), ctypes.py_object(reason)
                )

    @contextlib.contextmanager
    def user_code(self) -> Iterator[None]:
        """While inside, `interrupt` raises in this thread."""
        with self.lock:
            self.in_user_code = True
        try:
            yield
        finally:
            with self.lock:
                self.in_user_code = False
                if self.stop.is_set():  # drop an interrupt not yet delivered
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)
