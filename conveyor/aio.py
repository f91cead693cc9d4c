"""The process's job event loop, on a thread of its own.

`async def` jobs run on it, and so do the clients they share (the outbound HTTP client), so
connection pools outlive a single job. Worker threads hand coroutines to it and wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: How often a waiting worker thread wakes to ask whether the job must stop.
POLL_SECONDS = 0.1
#: How long an interrupted coroutine gets to unwind after its task is cancelled.
CANCEL_GRACE_SECONDS = 5.0


class LoopThread:
    """An asyncio event loop running on a daemon thread until `close`."""

    def __init__(self, name: str = "conveyor-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def in_loop(self) -> bool:
        """True when called from the loop's own thread (where blocking on it would hang)."""
        return threading.current_thread() is self._thread

    def run(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        interrupt: Callable[[], type[BaseException] | None] | None = None,
    ) -> T:
        """Run `coro` on the loop and wait for it from this (other) thread.

        `interrupt` is asked between waits: once it names an exception (a cancellation, a time
        limit), the task is cancelled and given a moment to unwind, and that exception is
        raised here. (An exception raised *into* a waiting thread could land inside the
        future's own locking and wedge the loop, so jobs are stopped this way instead.)
        """
        if self.in_loop:
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop: await the coroutine")
        # `asyncio.run_coroutine_threadsafe`, in two steps: the future exists before the
        # coroutine is handed over, so an exception raised into this thread at any moment
        # after that (the coroutine may already run) still finds it, and cancels it.
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            self.loop.call_soon_threadsafe(self._start, coro, future)
            while not future.done():
                concurrent.futures.wait([future], timeout=POLL_SECONDS)
                reason = interrupt() if interrupt is not None else None
                if reason is not None and not future.done():
                    self._cancel(future)
                    raise reason()
        except BaseException:
            self._cancel(future)
            raise
        return future.result()

    def _start(self, coro: Coroutine[Any, Any, T], future: concurrent.futures.Future[T]) -> None:
        """On the loop: run `coro` as a task whose outcome (or cancellation) `future` shares."""
        if future.cancelled():  # stopped before it began
            coro.close()
            return
        asyncio.futures._chain_future(self.loop.create_task(coro), future)  # type: ignore[attr-defined]

    def _cancel(self, future: concurrent.futures.Future[Any]) -> None:
        """Cancel the task and give it a moment to unwind."""
        self.loop.call_soon_threadsafe(future.cancel)
        concurrent.futures.wait([future], timeout=CANCEL_GRACE_SECONDS)

    async def run_here(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on this loop from any running loop (a hop when it is another one)."""
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        """Cancel what still runs, then stop the loop and its thread."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(self._cancel_all(), self.loop).result(
                    timeout=CANCEL_GRACE_SECONDS
                )
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=CANCEL_GRACE_SECONDS)
        if not self._thread.is_alive():
            self.loop.close()

    async def _cancel_all(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.loop.shutdown_asyncgens()
