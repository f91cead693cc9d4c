"""The platform `bench/chaos.py` runs and hurts: private servers (tests/servers.py), two
`conveyor web` processes and two workers kept running as a supervisor would, and the faults:
process kills, server restarts and a frozen worker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import secrets
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.harness import (
    Processes,
    cleanup,
    executable,
    free_port,
    log,
    run_cli,
    wait_for,
)
from tests.servers import PrivatePostgres, PrivateRabbitMQ, PrivateRedis

WEBS, WORKERS = 2, 2
#: Short leases and sweeps, as the e2e tests use (tests/e2e/processes.py: FAST).
FAST = {
    "CONVEYOR_LEASE_SECONDS": "2",
    "CONVEYOR_SWEEP_INTERVAL_SECONDS": "0.2",
    "CONVEYOR_PUBLISH_GRACE_SECONDS": "0.5",
    "CONVEYOR_DB_POOL_SIZE": "5",
    "CONVEYOR_LOG_LEVEL": "INFO",
    # A worker is killed every ~2 s: a job may lose 3 in a row by sheer bad luck, and the
    # default (2) would then fail it as a job that kills its workers. Only a defect fails a
    # system job now (a loss counted twice, say).
    "CONVEYOR_MAX_WORKER_LOSSES": "10",
}

FREEZE_MARGIN = 3.0  # a frozen worker stays frozen for its lease plus this
START_TIMEOUT = 60.0
READY_LINE = "Worker process is ready for action"


@dataclass
class Counts:
    """What the fault schedule did (and what happened on its own)."""

    faults: list[str] = field(default_factory=list)
    worker_kills: int = 0
    web_kills: int = 0
    exits: int = 0  # processes that exited by themselves (started again)


class Platform:
    """One broker's run: its servers, two web processes and two workers, kept running."""

    def __init__(
        self,
        broker: str,
        directory: Path,
        stack: contextlib.ExitStack,
        *,
        threads: int,
        settings: dict[str, str],
        fault_gap: float,
    ):
        self.broker = broker
        self.extra_settings = settings
        self.fault_gap = fault_gap
        self.directory = directory
        self.procs = Processes(directory)
        self.pg = PrivatePostgres()
        self.events = PrivateRedis(directory / "redis-events")
        self.rabbit = PrivateRabbitMQ() if broker == "rabbitmq" else None
        # The broker's Redis fsyncs its append-only file every second, as in production
        # (docker-compose): a SIGKILL may lose the last second of messages.
        self.broker_redis = (
            PrivateRedis(directory / "redis-broker", appendfsync="everysec")
            if broker == "redis"
            else None
        )
        stack.callback(cleanup("PostgreSQL", self.pg.close))
        stack.callback(cleanup("the announcements Redis", self.events.close))
        if self.rabbit is not None:
            stack.callback(cleanup("RabbitMQ", self.rabbit.close))
        if self.broker_redis is not None:
            stack.callback(cleanup("the broker Redis", self.broker_redis.close))
        stack.callback(self.procs.stop_all)  # before the servers go
        self.ports = [free_port() for _ in range(WEBS)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.argv: dict[str, list[str]] = {}
        for i, port in enumerate(self.ports, 1):
            web = executable("conveyor", "conveyor.cli")
            self.argv[f"web-{i}"] = [*web, "web", "--host", "127.0.0.1", "--port", str(port)]
        for i in range(1, WORKERS + 1):
            self.argv[f"worker-{i}"] = [
                *executable("dramatiq", "dramatiq"),
                "conveyor.workers.system",
                "--processes",
                "1",
                "--threads",
                str(threads),
            ]
        self.env: dict[str, str] = {}
        self.token = ""
        self.counts = Counts()
        self.frozen: set[str] = set()
        self.started_at: dict[str, float] = {}
        self.locks = {name: asyncio.Lock() for name in self.argv}
        self.exit_reports = 0

    @property
    def lease(self) -> float:
        return float(self.env["CONVEYOR_LEASE_SECONDS"])

    def start(self) -> None:
        """Servers, schema, member and token, then every process, once ready."""
        t = time.monotonic()
        with ThreadPoolExecutor(1) as pool:  # RabbitMQ boots for 10-25 s: meanwhile the rest
            booting = pool.submit(self.rabbit.start) if self.rabbit is not None else None
            self.pg.start()
            self.events.start()
            if self.broker_redis is not None:
                self.broker_redis.start()
            if booting is not None:
                booting.result()
        if self.rabbit is not None:
            broker_url, broker_port = self.rabbit.url(), self.rabbit.port
        else:
            assert self.broker_redis is not None
            broker_url, broker_port = self.broker_redis.url, self.broker_redis.port
        log(
            f"{self.broker}: servers up in {time.monotonic() - t:.1f}s: PostgreSQL on port "
            f"{self.pg.port} (database conveyor), {self.broker} on {broker_port}, "
            f"announcements Redis on {self.events.port}"
        )
        database_url = self.pg.url("conveyor")
        settings = {
            **FAST,
            "CONVEYOR_SECRET_KEY": secrets.token_urlsafe(48),
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_BROKER_URL": broker_url,
            "CONVEYOR_BROKER_NAMESPACE": "conveyor-chaos",
            "CONVEYOR_REDIS_URL": self.events.url,
            "CONVEYOR_REDIS_PREFIX": "conveyor-chaos",
            **self.extra_settings,
        }
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        self.env.update(settings, PYTHONUNBUFFERED="1")
        cli = executable("conveyor", "conveyor.cli")
        run_cli([*cli, "db", "upgrade"], self.env, self.directory)
        run_cli([*cli, "users", "create", "chaos@example.com"], self.env, self.directory)
        issued = run_cli([*cli, "tokens", "issue", "chaos@example.com"], self.env, self.directory)
        self.token = issued.strip()
        for name in self.argv:
            self.launch(name, quiet=False)
        for name in self.argv:
            wait_for(
                f"{name} to be ready",
                partial(self.ready_now, name),
                START_TIMEOUT,
                alive=partial(self.procs.check, name),
            )

    def launch(self, name: str, *, quiet: bool = True) -> None:
        self.procs.start(name, self.argv[name], self.env, self.directory, quiet=quiet)
        self.started_at[name] = time.monotonic()

    def ready_now(self, name: str) -> bool:
        """Whether the process serves: a web process answers /healthz, a worker said so."""
        started = self.procs.running.get(name)
        if started is None or started.proc.poll() is not None:
            return False
        if name.startswith("worker"):
            return READY_LINE in started.output()
        url = self.urls[int(name.rsplit("-", 1)[1]) - 1]
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)

    async def restart(self, name: str) -> None:
        """SIGKILL the process's group (if alive) and start it again."""
        async with self.locks[name]:
            self.frozen.discard(name)
            await asyncio.to_thread(self.procs.kill, name)
            self.launch(name)

    async def supervise(self, stop: asyncio.Event) -> None:
        """Start again whatever exited by itself (a supervisor's job), at most once a second."""
        while not stop.is_set():
            for name in self.argv:
                started = self.procs.running.get(name)
                if self.locks[name].locked() or started is None:
                    continue
                code = started.proc.poll()
                if code is None or time.monotonic() - self.started_at[name] < 1.0:
                    continue
                self.counts.exits += 1
                self.exit_reports += 1
                if self.exit_reports <= 5:
                    log(
                        f"{name} exited by itself (code {code}); starting it again. Its last lines:"
                    )
                    print(self.procs.tail(name, 8), file=sys.stderr)
                await self.restart(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    def victims(self, prefix: str) -> list[str]:
        """Processes of that kind that are up and ready, not frozen, oldest first."""
        names = [
            name
            for name in self.argv
            if name.startswith(prefix) and name not in self.frozen and not self.locks[name].locked()
        ]
        ready = []
        for name in names:
            with contextlib.suppress(Exception):
                if name.startswith("worker") and self.ready_now(name):
                    ready.append(name)
                elif name.startswith("web"):
                    started = self.procs.running.get(name)
                    if started is not None and started.proc.poll() is None:
                        ready.append(name)
        return sorted(ready, key=lambda name: self.started_at[name])

    # --- faults ---

    async def kill_every(
        self, prefix: str, period: float, until: float, rng: random.Random
    ) -> None:
        """SIGKILL the longest-running ready process of a kind every ~`period` s; restart it."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(period * rng.uniform(0.75, 1.25), until - loop.time()))
            if loop.time() >= until:
                return
            victims = self.victims(prefix)
            if not victims:
                continue
            await self.restart(victims[0])
            if prefix == "worker":
                self.counts.worker_kills += 1
            else:
                self.counts.web_kills += 1

    def schedule(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """The server faults and the freeze, in the order they are applied (then again)."""
        pg, events = self.pg, self.events
        broker_kill: tuple[str, Callable[[], None]]
        broker_restart: tuple[str, Callable[[], None]]
        if self.rabbit is not None:
            rabbit = self.rabbit
            broker_kill = ("rabbitmq SIGKILL and boot", lambda: self.kill_rabbitmq(rabbit))
            broker_restart = ("rabbitmq stop_app and start_app", rabbit.restart)
        else:
            assert self.broker_redis is not None
            broker = self.broker_redis
            broker_kill = ("broker redis SIGKILL and start", lambda: broker.restart(hard=True))
            broker_restart = ("broker redis restart", lambda: broker.restart(hard=False))

        def blocking(
            label: str, fn: Callable[[], None]
        ) -> tuple[str, Callable[[], Awaitable[None]]]:
            return label, lambda: asyncio.to_thread(fn)

        return [
            blocking("postgres restart -m fast", lambda: pg.restart("fast")),
            blocking(*broker_kill),
            blocking("events redis restart", lambda: events.restart(hard=False)),
            ("worker frozen past its lease", self.freeze),
            blocking("postgres restart -m immediate", lambda: pg.restart("immediate")),
            blocking(*broker_restart),
            blocking("events redis SIGKILL and start", lambda: events.restart(hard=True)),
        ]

    async def freeze(self) -> None:
        """SIGSTOP a ready worker for its lease plus a margin, then SIGCONT it."""
        deadline = time.monotonic() + START_TIMEOUT
        while not (victims := self.victims("worker")):  # both may be starting after kills
            if time.monotonic() > deadline:
                log("  no worker was ready to be frozen")
                return
            await asyncio.sleep(0.1)
        name = victims[-1]
        self.frozen.add(name)
        try:
            self.procs.signal(name, signal.SIGSTOP)
            await asyncio.sleep(self.lease + FREEZE_MARGIN)
        finally:
            self.procs.signal(name, signal.SIGCONT)
            self.frozen.discard(name)

    def kill_rabbitmq(self, rabbit: PrivateRabbitMQ) -> None:
        """SIGKILL the node and boot it again; a boot that fails (seen once in many: the node
        up, its application not) is tried once more, its logs kept with the run's."""
        rabbit.kill()
        try:
            rabbit.resume()
        except RuntimeError as exc:
            kept = self.directory / f"rabbitmq-log-{len(self.counts.faults)}"
            shutil.copytree(rabbit.directory / "log", kept, dirs_exist_ok=True)
            log(f"  RabbitMQ did not boot ({exc}); its log is in {kept}; booting it again")
            rabbit.kill()
            rabbit.resume()

    async def server_faults(self, until: float) -> None:
        """Apply the schedule's faults one after another, a gap apart, until `until`."""
        loop = asyncio.get_running_loop()
        for label, apply in itertools.cycle(self.schedule()):
            await asyncio.sleep(max(min(self.fault_gap, until - loop.time()), 0))
            if loop.time() >= until:
                return
            t = loop.time()
            log(f"fault: {label}")
            await apply()
            self.counts.faults.append(label)
            log(f"  {label}: done in {loop.time() - t:.1f}s")
