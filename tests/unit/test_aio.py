"""The job event loop thread: running coroutines from other threads, interrupting them,
closing."""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from collections.abc import Iterator

import pytest

from conveyor.aio import LoopThread
from conveyor.errors import JobCancelledError, JobTimeLimitError


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    loop = LoopThread(name="test-loop")
    yield loop
    loop.close()


def raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    """Raise `exc` in `thread`, as the heartbeat does to a job past its limit."""
    assert thread.ident is not None
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(exc)
    )
    assert done == 1


def test_run_returns_the_coroutines_result_computed_on_the_loop(loop: LoopThread) -> None:
    async def where() -> tuple[bool, int]:
        await asyncio.sleep(0)
        return asyncio.get_running_loop() is loop.loop, threading.get_ident()

    on_loop, thread_id = loop.run(where())
    assert on_loop is True
    assert thread_id != threading.get_ident()
    assert loop.in_loop is False


def test_run_raises_the_coroutines_exception(loop: LoopThread) -> None:
    async def boom() -> None:
        raise ValueError("from the loop")

    with pytest.raises(ValueError, match="from the loop"):
        loop.run(boom())


@pytest.mark.parametrize("exc", [JobCancelledError, JobTimeLimitError])
def test_an_interrupt_cancels_the_task_and_is_raised_in_the_waiting_thread(
    loop: LoopThread, exc: type[BaseException]
) -> None:
    started = threading.Event()
    cancelled = threading.Event()
    stop: list[type[BaseException]] = []
    caught: list[BaseException] = []

    async def long_job() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def wait() -> None:
        try:
            loop.run(long_job(), interrupt=lambda: stop[0] if stop else None)
        except BaseException as error:
            caught.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert started.wait(5)
    began = time.monotonic()
    stop.append(exc)  # what the heartbeat does to a job cancelled or past its limit
    waiter.join(5)
    assert not waiter.is_alive()
    assert cancelled.is_set()  # the task was cancelled, not left running on the loop
    assert len(caught) == 1 and type(caught[0]) is exc  # the reason goes on to the caller
    assert time.monotonic() - began < 2


def test_the_interrupted_coroutine_gets_to_clean_up(loop: LoopThread) -> None:
    started = threading.Event()
    cleaned: list[str] = []

    async def with_cleanup() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)  # an async cleanup, such as closing a connection
            cleaned.append("done")

    def wait() -> None:
        try:
            loop.run(with_cleanup())
        except JobCancelledError:
            pass

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert started.wait(5)
    raise_in(waiter, JobCancelledError)
    waiter.join(5)
    assert cleaned == ["done"]  # run waited for the unwinding before going on


def test_run_from_the_loops_own_thread_is_refused(loop: LoopThread) -> None:
    async def inner() -> int:
        return 1

    async def nested() -> str:
        coro = inner()
        try:
            loop.run(coro)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "await the coroutine" in loop.run(nested())


async def test_run_here_hops_from_another_loop(loop: LoopThread) -> None:
    async def where() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert await loop.run_here(where()) is loop.loop
    assert asyncio.get_running_loop() is not loop.loop


def test_close_cancels_what_still_runs_and_stops_the_thread() -> None:
    loop = LoopThread(name="test-close")
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = asyncio.run_coroutine_threadsafe(forever(), loop.loop)
    loop.close()
    assert cancelled.is_set()
    assert future.cancelled()
    assert loop.loop.is_closed()
    loop.close()  # twice is harmless
