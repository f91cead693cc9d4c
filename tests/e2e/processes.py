"""Start, signal and stop Conveyor's real processes; talk to them over plain HTTP.

Every process gets its own session (process group), so a signal reaches Dramatiq's forked
workers too, and writes its output to a file that is shown when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from tests.stack import wait_until

#: The virtualenv's scripts (`conveyor`, `dramatiq`): next to the running interpreter.
BIN = Path(sys.executable).parent
SECRET_KEY = "e2e-secret-key-that-is-long-enough-for-hs256-signatures"

#: Settings that make leases, sweeps and the outbox grace short enough for tests.
FAST: dict[str, str] = {
    "CONVEYOR_SECRET_KEY": SECRET_KEY,
    "CONVEYOR_LEASE_SECONDS": "2",
    "CONVEYOR_SWEEP_INTERVAL_SECONDS": "0.2",
    "CONVEYOR_PUBLISH_GRACE_SECONDS": "0.5",
    "CONVEYOR_DB_POOL_SIZE": "5",
    "CONVEYOR_LOG_LEVEL": "INFO",
    # Several runs share the machine: a pool serves metrics only where a test gives it a port.
    "CONVEYOR_WORKER_METRICS_PORTS": "",
}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(settings: Mapping[str, str]) -> dict[str, str]:
    """This environment without any CONVEYOR_* variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def run_cli(*args: str, env: Mapping[str, str], cwd: Path) -> str:
    """Run a short `conveyor` command to completion; its stdout."""
    done = subprocess.run(
        [str(BIN / "conveyor"), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"conveyor {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


class Process:
    """One started command, in its own process group, with its output in `log`."""

    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path, log: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.cwd = cwd
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_output(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of `pattern` in the output; fails if the process exits first."""

        def found() -> re.Match[str] | None:
            match = re.search(pattern, self.output(), re.MULTILINE)
            if match is None and self.returncode is not None:
                raise AssertionError(f"{self.name} exited ({self.returncode}) before {pattern!r}")
            return match

        match: re.Match[str] = wait_until(found, timeout=timeout, interval=0.05)
        return match

    def signal_group(self, sig: signal.Signals) -> None:
        """Send `sig` to the whole process group (Dramatiq forks its workers)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> int:
        """SIGKILL the process group, as a crash or the OOM killer would; the exit code."""
        self.signal_group(signal.SIGKILL)
        return self.wait_exit(10)

    def wait_exit(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout=timeout)

    def interrupt(self) -> None:
        """SIGINT to the process, as Ctrl-C in its terminal."""
        assert self.popen is not None
        if self.returncode is None:
            self.popen.send_signal(signal.SIGINT)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process (Dramatiq's main process passes it on to its workers), then
        SIGKILL the group if it is still there after `timeout`; also whatever it left."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


class Processes:
    """The processes a test started; `stop_all` ends every one of them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Process] = []

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> Process:
        names = [p.name for p in self.started]
        unique = f"{name}-{names.count(name) + 1}" if name in names else name
        log = self.directory / f"{unique}.log"
        process = Process(unique, argv, env, cwd or self.directory, log)
        self.started.append(process.start())
        return process

    def web(self, env: Mapping[str, str], *, preload: str = "") -> tuple[Process, Api]:
        """`conveyor web` on a free port, once it answers `/healthz`; `preload`: a module it
        imports first (`tests.jobs`, with the project on PYTHONPATH: more job types)."""
        port = free_port()
        cli = ["-m", "conveyor.cli"]
        if preload:
            cli = ["-c", f"import sys, {preload}; from conveyor.cli import main; sys.exit(main())"]
        argv = [sys.executable, *cli, "web", "--host", "127.0.0.1"]
        process = self.start("web", [*argv, "--port", str(port)], env)
        api = Api(f"http://127.0.0.1:{port}")
        wait_until(lambda: _alive(process) and api.healthy(), timeout=20, interval=0.05)
        return process, api

    def worker(self, env: Mapping[str, str], pool: str = "system", *, module: str = "") -> Process:
        """`dramatiq conveyor.workers.<pool>` (or `module`) with one process of four threads,
        once ready."""
        argv = [str(BIN / "dramatiq"), module or f"conveyor.workers.{pool}", "--processes", "1"]
        process = self.start("worker", [*argv, "--threads", "4"], env)
        process.wait_for_output(r"Worker process is ready for action", timeout=30)
        return process

    def dev(self, env: Mapping[str, str], project: Path) -> tuple[Process, Api]:
        """`conveyor dev` in `project` on a free port; the API with the token it printed."""
        port = free_port()
        argv = [str(BIN / "conveyor"), "dev", "--port", str(port)]
        process = self.start("dev", argv, env, cwd=project)
        url = process.wait_for_output(r"^url: (\S+)$", timeout=30).group(1)
        token = process.wait_for_output(r"^token: (\S+)$", timeout=5).group(1)
        assert url == f"http://127.0.0.1:{port}", url
        return process, Api(url, token)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()

    def report(self) -> str:
        """Every process's command line, exit code and output."""
        parts = []
        for p in self.started:
            header = f"===== {p.name} (exit {p.returncode}): {' '.join(p.argv)}"
            parts.append(f"{header}\n{p.output()}")
        return "\n".join(parts)


def _alive(process: Process) -> bool:
    if process.returncode is not None:
        raise AssertionError(f"{process.name} exited with {process.returncode}")
    return True


class Api:
    """A tiny client of the HTTP API on urllib."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.token = token

    def with_token(self, token: str) -> Api:
        return Api(self.base_url, token)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """The status and decoded JSON body of one request (errors included)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        return status, json.loads(raw) if raw else None

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    def submit(
        self, type_: str, payload: dict[str, Any], *, expect: int = 202, **headers: str
    ) -> dict[str, Any]:
        status, body = self.request(
            "POST", "/v1/jobs", {"type": type_, "payload": payload}, headers=headers
        )
        assert status == expect, (status, body)
        return body  # type: ignore[no-any-return]

    def get(self, job_id: str, *, wait: float | None = None, until: str = "change") -> Any:
        query = "" if wait is None else f"?wait={wait:.2f}&until={until}"
        status, body = self.request("GET", f"/v1/jobs/{job_id}{query}")
        assert status == 200, (status, body)
        return body

    def wait_finished(self, job_id: str, within: float = 30.0) -> dict[str, Any]:
        """Long-poll until the job is succeeded, failed or cancelled; fail after `within`."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            job = self.get(job_id, wait=max(min(remaining, 5.0), 0.0), until="finished")
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job  # type: ignore[no-any-return]
            assert remaining > 0, f"job {job_id} still {job['status']} after {within}s: {job}"
