"""What the benchmark scripts share: child processes in their own process groups, waits with
a bound, cleanup steps that report their failure, and the output conventions (progress on
standard error; a `#` header and `name: value unit` lines on standard output).

The scripts run as `python bench/<script>.py` from the repository root; they put the root on
`sys.path` and import this module as `bench.harness`.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class BenchError(Exception):
    """A failure with a message for the user (no traceback needed)."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: TextIO
    offset: int = 0  # size of the log file when this run of the process started

    def output(self) -> str:
        """What this run of the process wrote (an earlier run's lines left out)."""
        self.log_file.flush()
        with self.log_path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")


@dataclass
class Processes:
    """Child processes, each in its own process group (dramatiq forks), logging to files.

    A name started again appends to the same log file."""

    log_dir: Path
    running: dict[str, Started] = field(default_factory=dict)

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path, *, quiet: bool = False
    ) -> Started:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("a")
        offset = log_file.tell()
        if not quiet:
            log(f"starting {name}: {' '.join(argv)}")
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started = Started(name, proc, log_path, log_file, offset)
        self.running[name] = started
        return started

    def check(self, name: str) -> None:
        """Raise if the process exited."""
        started = self.running[name]
        code = started.proc.poll()
        if code is not None:
            raise BenchError(f"{name} exited with code {code}:\n{self.tail(name)}")

    def check_all(self) -> None:
        for name in list(self.running):
            self.check(name)

    def tail(self, name: str, lines: int = 30) -> str:
        started = self.running.get(name)
        if started is None:
            return ""
        started.log_file.flush()
        text = started.log_path.read_text(errors="replace").splitlines()
        return "\n".join(f"    {line}" for line in text[-lines:])

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send `sig` to the process's whole group (a frozen or killed dramatiq: all of it)."""
        started = self.running.get(name)
        if started is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.proc.pid, sig)

    def kill(self, name: str) -> None:
        """SIGKILL the process group, as a crash or the OOM killer would, and reap it."""
        started = self.running.pop(name, None)
        if started is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(started.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.proc.wait(timeout=10)
        started.log_file.close()

    def stop(self, name: str, timeout: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`."""
        started = self.running.pop(name, None)
        if started is None:
            return
        pgid = started.proc.pid
        # A stopped (frozen) process handles no SIGTERM until it runs again.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGCONT)
        # The leader first: dramatiq's main process stops its forked workers gracefully (a
        # second SIGTERM sent to the whole group would make them kill themselves at once).
        started.proc.terminate()
        try:
            started.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop within {timeout:g}s; killing it")
        # Whatever is left of its group (orphaned or hung workers): SIGTERM, then SIGKILL.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.proc.wait(timeout=5)
        started.log_file.close()

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            try:
                self.stop(name)
            except Exception as exc:
                log(f"could not stop {name}: {exc!r}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_cli(argv: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 120.0) -> str:
    """Run a command to completion; its stdout, or a BenchError with its output."""
    try:
        done = subprocess.run(
            list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)} did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} failed with code {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def executable(name: str, module: str) -> list[str]:
    """The console script next to this interpreter, or `python -m module`."""
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str,
    predicate: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.2,
    alive: Callable[[], None] = lambda: None,
) -> None:
    """Poll `predicate` until true; raise BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive()
        try:
            if predicate():
                return
        except Exception:  # not up yet
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def cleanup(what: str, fn: Callable[[], None]) -> Callable[[], None]:
    """A cleanup step that reports its failure instead of hiding the original error."""

    def run() -> None:
        try:
            fn()
        except Exception as exc:
            log(f"cleanup of {what} failed: {exc!r}")

    return run


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def source_version() -> str:
    """The commit of the checkout the benchmark runs from, and whether it has local edits."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "conveyor"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "commit unknown"
    if not commit:
        return "commit unknown"
    return f"commit {commit}{' + local edits in conveyor/' if dirty else ''}"


def fmt(value: float, digits: int = 1) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C (asyncio cancels its tasks cleanly) so the cleanup runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
