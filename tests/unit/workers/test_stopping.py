"""A worker told to stop: its running jobs get the drain time, the rest are handed back (no
worker loss, no retry used), later deliveries are passed on; and the pieces around it: the
first-signal-only guard, `conveyor worker`'s arguments and `conveyor release`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pkgutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import Field
from sqlalchemy.orm import Session, sessionmaker

import conveyor.workers as workers_package
from conveyor import bootstrap, cli
from conveyor.errors import ConfigurationError
from conveyor.models import Job, JobStatus
from conveyor.registry import JobContext, Payload, Registry, job
from conveyor.services import runs
from conveyor.services.outcomes import Attempt
from conveyor.settings import PROCFILE_RUNNER_VARIABLES, local_procfile_runner
from conveyor.workers import boot, runner
from conveyor.workers.lifecycle import WIND_DOWN_SECONDS, JobLifecycle
from tests import stack
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer

REGISTRY = Registry()
LEASE = dt.timedelta(seconds=30)
DRAIN = 0.3


class Nap(Payload):
    seconds: float = Field(1.0, ge=0)


@job(queue="tests", name="tests.nap", registry=REGISTRY)
def nap(payload: Nap, ctx: JobContext) -> str:
    ctx.sleep(payload.seconds)  # a stop wakes it
    return "rested"


@pytest.fixture
def lifecycle(
    db: sessionmaker[Session], announcer: RecordingAnnouncer, enqueuer: RecordingEnqueuer
) -> Iterator[JobLifecycle]:
    container = bootstrap.Container(
        stack.test_settings(database_url="sqlite://", broker_url="stub://", redis_url=None),
        bootstrap.ProcessRole.WORKER,
        registry=REGISTRY,
        db=db,
        enqueuer=enqueuer,
        announcements=announcer,  # type: ignore[arg-type]
    )
    lifecycle = JobLifecycle(container, lease=LEASE, drain_seconds=DRAIN)
    yield lifecycle
    lifecycle.after_worker_shutdown(None, None)  # type: ignore[arg-type]
    container.close()


@pytest.fixture
def napping(make_job: MakeJob) -> Callable[[float], Job]:
    def make(seconds: float) -> Job:
        return make_job(job_type="tests.nap", queue="tests", payload={"seconds": seconds})

    return make


def _start(lifecycle: JobLifecycle, row: Job, load: Callable[..., Job]) -> threading.Thread:
    """Run the job's delivery on a thread of its own (a worker thread), once it runs."""
    thread = threading.Thread(target=lifecycle.run, args=(REGISTRY.get(row.type), str(row.id)))
    thread.start()
    stack.wait_until(lambda: lifecycle.running_jobs(), timeout=5)
    assert load(row.id).status == JobStatus.RUNNING
    return thread


def test_a_job_that_finishes_within_the_drain_time_is_recorded(
    lifecycle: JobLifecycle,
    napping: Callable[[float], Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
) -> None:
    lifecycle.drain_seconds = 5.0
    row = napping(0.3)
    thread = _start(lifecycle, row, load)
    started = time.monotonic()
    lifecycle.drain()
    assert time.monotonic() - started < 3  # it returns as soon as the job is done
    thread.join(timeout=5)
    done = load(row.id)
    assert (done.status, done.result, done.worker_losses, done.handbacks) == (
        JobStatus.SUCCEEDED,
        "rested",
        0,
        0,
    )
    assert enqueuer.messages == []


def test_a_job_still_running_after_the_drain_time_is_handed_back(
    lifecycle: JobLifecycle,
    napping: Callable[[float], Job],
    load: Callable[..., Job],
    history: Callable[..., Any],
    announcer: RecordingAnnouncer,
    enqueuer: RecordingEnqueuer,
) -> None:
    row = napping(30)
    thread = _start(lifecycle, row, load)
    started = time.monotonic()
    lifecycle.drain()
    assert time.monotonic() - started < DRAIN + WIND_DOWN_SECONDS + 1
    thread.join(timeout=5)
    assert not thread.is_alive()

    back = load(row.id)
    assert (back.status, back.attempts, back.worker_losses, back.handbacks) == (
        JobStatus.QUEUED,
        1,
        0,
        1,
    )
    assert back.lease_expires_at is None and back.error is None
    assert back.published_at is not None  # its message was sent again at once
    [message] = enqueuer.messages
    assert (message.job_id, message.type, message.queue, message.delay_ms) == (
        row.id,
        "tests.nap",
        "tests",
        0,
    )
    assert history(row.id)[-1] == ("status", "queued", 1)
    assert announcer.announced[-1] == (row.id, "queued")
    assert lifecycle.running_jobs() == []


def test_a_handed_back_job_runs_again_without_using_a_retry(
    db: sessionmaker[Session],
    lifecycle: JobLifecycle,
    napping: Callable[[float], Job],
    load: Callable[..., Job],
) -> None:
    row = napping(30)
    _start(lifecycle, row, load).join(timeout=0)
    lifecycle.drain()
    again = runs.claim(db, row.id, worker="next", lease=LEASE)
    assert again is not None
    assert (again.attempts, again.worker_losses, again.handbacks) == (2, 0, 1)
    # With no retries, a failure of this second run is still the job's first failure.
    attempt = Attempt(again.attempts, again.worker_losses, 0, 2, handbacks=again.handbacks)
    assert attempt.failures == 1


def test_a_job_whose_cancel_was_requested_ends_cancelled_instead_of_handed_back(
    lifecycle: JobLifecycle,
    napping: Callable[[float], Job],
    load: Callable[..., Job],
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
) -> None:
    row = napping(30)
    thread = _start(lifecycle, row, load)
    set_job(row.id, cancel_requested=True)  # not seen yet: no heartbeat runs here
    lifecycle.drain()
    thread.join(timeout=5)
    assert load(row.id).status == JobStatus.CANCELLED
    assert enqueuer.messages == []


def test_a_delivery_that_reaches_a_stopping_worker_is_passed_on_untouched(
    lifecycle: JobLifecycle,
    napping: Callable[[float], Job],
    load: Callable[..., Job],
    enqueuer: RecordingEnqueuer,
) -> None:
    lifecycle.drain()
    row = napping(0)
    lifecycle.run(REGISTRY.get("tests.nap"), str(row.id))
    waiting = load(row.id)
    assert (waiting.status, waiting.attempts) == (JobStatus.QUEUED, 0)
    assert [m.job_id for m in enqueuer.messages] == [row.id]


def test_hand_back_changes_nothing_for_an_attempt_that_no_longer_holds_its_job(
    db: sessionmaker[Session], napping: Callable[[float], Job], load: Callable[..., Job]
) -> None:
    row = napping(0)
    claimed = runs.claim(db, row.id, worker="w", lease=LEASE)
    assert claimed is not None
    assert runs.finish(db, row.id, claimed.attempts, JobStatus.SUCCEEDED, result=1)
    assert runs.hand_back(db, row.id, claimed.attempts) is None
    assert (load(row.id).status, load(row.id).handbacks) == (JobStatus.SUCCEEDED, 0)


# --- only the first stop signal stops ------------------------------------------------------


def test_only_the_first_stop_signal_reaches_dramatiqs_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[object] = []
    guarded = boot.first_signal_only(
        lambda signum, frame: received.append(signum),
        threading.Event(),
        on_stop=lambda: received.append("no new messages"),
    )
    guarded(signal.SIGTERM, None)
    guarded(signal.SIGTERM, None)
    guarded(signal.SIGHUP, None)
    assert received == ["no new messages", signal.SIGTERM]
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 2 and ignored[0].startswith("SIGTERM received while stopping")


def test_the_guard_leaves_handlers_other_than_dramatiqs_alone() -> None:
    before = signal.getsignal(signal.SIGTERM)
    boot.guard_stop_signals()
    assert signal.getsignal(signal.SIGTERM) is before


# --- conveyor worker and conveyor release ----------------------------------------------------


def test_conveyor_worker_runs_the_pools_module_with_conveyors_logging_and_your_arguments() -> None:
    argv = runner.dramatiq_argv("system", ["--processes", "2", "--worker-shutdown-timeout", "9"])
    assert argv[:2] == ["conveyor.workers.system", runner.POOL_CHECK]  # the check after it
    assert "--skip-logging" in argv
    assert argv[-4:] == ["--processes", "2", "--worker-shutdown-timeout", "9"]  # yours win
    assert runner.pool_module("tests.e2e.testing_pool") == "tests.e2e.testing_pool"


@pytest.mark.parametrize(
    "pool",
    [
        *sorted(
            m.name
            for m in pkgutil.iter_modules(workers_package.__path__)
            if m.name not in {"system", "notifications", "auth"}
        ),
        "_private",
        "nope",
        "no.such.module",
    ],
)
def test_conveyor_worker_refuses_what_is_not_a_pool(pool: str) -> None:
    with pytest.raises(ConfigurationError, match="pool"):
        runner.pool_module(pool)


def test_conveyor_worker_stops_when_the_module_never_booted_a_pool() -> None:
    """`os.path` imports fine, but serves nothing: one line says so, and the exit is 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "os.path", "--processes", "1"]
    done = subprocess.run(
        [*argv, "--threads", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    refused = [line for line in done.stderr.splitlines() if "is not a worker pool" in line]
    assert len(refused) == 1, done.stderr
    assert "os.path is not a worker pool: it never called" in refused[0]
    assert "Traceback" not in done.stderr


def test_a_local_procfile_runner_is_recognised_by_its_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in PROCFILE_RUNNER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DYNO", "release.1")  # Heroku's release phase: no local runner
    assert local_procfile_runner() is None
    monkeypatch.setenv("HONCHO_PROCESS_NAME", "release.1")
    assert local_procfile_runner() == "HONCHO_PROCESS_NAME=release.1"


def test_conveyor_release_upgrades_the_database_and_exits_outside_a_local_runner(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    for name in PROCFILE_RUNNER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    settings = stack.test_settings(database_url=sqlite_url, broker_url="stub://")
    args = argparse.Namespace(idle=False, exit=False)
    assert cli.cmd_release(args, settings) == 0
    monkeypatch.setenv("PS", "release.1")  # foreman's, but told to exit
    assert cli.cmd_release(argparse.Namespace(idle=False, exit=True), settings) == 0


# --- JSON mode: every line a process prints is JSON -----------------------------------------

PRINTS_ALL_SORTS = """
import threading, warnings
from conveyor.logs import configure_logging
configure_logging("INFO", "json")
warnings.warn("a warning", UserWarning)
thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
thread.start()
thread.join()
raise ValueError("nobody caught this")
"""


def test_in_json_mode_warnings_and_uncaught_exceptions_are_json_lines() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PRINTS_ALL_SORTS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(e["level"], e["message"].splitlines()[0][:40]) for e in entries] == [
        ("warning", entries[0]["message"].splitlines()[0][:40]),
        ("error", "uncaught exception in thread doomed"),
        ("critical", "uncaught exception"),
    ]
    assert "a warning" in entries[0]["message"]
    assert "ZeroDivisionError" in entries[1]["exc_info"]
    assert "nobody caught this" in entries[2]["exc_info"]
