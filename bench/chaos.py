"""Conveyor under faults: a steady stream of jobs while processes are killed and servers
restarted, then every job checked against what its clients were told.

For each broker (RabbitMQ, Redis) it starts private servers (tests/servers.py): PostgreSQL,
a Redis for status announcements, and the broker (a RabbitMQ node, or a second Redis). It
migrates the database and makes a member and a token with the `conveyor` CLI, and runs two
`conveyor web` processes and two `dramatiq conveyor.workers.system` workers with short leases
and sweeps. A few HTTP clients submit jobs at a steady rate, spread over both web processes:
`system.echo`, `system.sleep` (short, in steps, so progress is written) and delayed echoes;
half of them with an Idempotency-Key, and those are retried with the same key when a try gets
no answer, a 5xx or a 409, as a real client would. Meanwhile:

- a worker is SIGKILLed every ~2 s and started again; a web process every ~10 s;
- one after another: PostgreSQL restarted (`-m fast`, later `-m immediate`), the broker
  restarted (RabbitMQ stop_app/start_app, and SIGKILL of the node; Redis gracefully, and
  SIGKILL), the announcements Redis restarted (gracefully, and SIGKILL), a worker frozen
  (SIGSTOP) past its lease and then thawed.

A process that exits by itself is started again, as a supervisor would. When the time is up,
the faults stop, the clients finish their retries, and the run waits (bounded) until no job is
waiting or running. Then every row is checked (bench/chaos_tally.py).

Standard output: a `#` header with the configuration, then `<broker>_<name>: value unit` lines
per broker. Progress and diagnostics go to standard error. The exit status is 1 when a broker
lost, wrongly failed, duplicated or finished late a job; 2 when the run itself failed.

    .venv/bin/python bench/chaos.py [--broker rabbitmq|redis|both] [--duration 90] [--rate 5]
        [--clients 4] [--bound 60] [--drain 120] [--seed 1] [--set CONVEYOR_NAME=value]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/chaos.py`
    sys.path.insert(0, str(ROOT))

from bench.chaos_tally import PENDING, JobRow, Submission, Tally, tally  # noqa: E402
from bench.harness import (  # noqa: E402
    BenchError,
    Processes,
    cleanup,
    executable,
    fmt,
    free_port,
    interrupt_on_sigterm,
    log,
    percentile,
    run_cli,
    source_version,
    wait_for,
)
from tests.servers import PrivatePostgres, PrivateRabbitMQ, PrivateRedis  # noqa: E402

BROKERS = ("rabbitmq", "redis")
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
#: The job mix: shares of echo, short sleep and delayed echo; the share with a key.
ECHO, SLEEP = 0.5, 0.4  # the rest: echo with delay_seconds
KEYED = 0.5
SLEEP_SECONDS, SLEEP_STEPS, DELAY_SECONDS = (0.1, 0.5), (2, 10), (1.0, 5.0)
#: How long a keyed submission is retried before its client gives up on it.
RETRY_FOR = 60.0
FREEZE_MARGIN = 3.0  # a frozen worker stays frozen for its lease plus this
START_TIMEOUT = 60.0
READY_LINE = "Worker process is ready for action"
PENDING_COUNT = "SELECT count(*) FROM jobs WHERE status = ANY(%s)"


@dataclass(frozen=True)
class Options:
    brokers: tuple[str, ...]
    duration: float
    rate: float
    clients: int
    threads: int
    bound: float
    drain: float
    worker_kill_every: float
    web_kill_every: float
    fault_gap: float
    seed: int
    settings: dict[str, str]
    keep_logs: bool


# --- the platform: private servers and supervised processes ---------------------------------


@dataclass
class Counts:
    """What the fault schedule did (and what happened on its own)."""

    faults: list[str] = field(default_factory=list)
    worker_kills: int = 0
    web_kills: int = 0
    exits: int = 0  # processes that exited by themselves (started again)


class Platform:
    """One broker's run: its servers, two web processes and two workers, kept running."""

    def __init__(self, opts: Options, broker: str, directory: Path, stack: contextlib.ExitStack):
        self.opts = opts
        self.broker = broker
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
                str(opts.threads),
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
        # The private server runs with synchronous_commit=off (fast tests); an immediate
        # restart would then drop commits that clients were told about. Not in this run.
        with psycopg.connect(self.pg.dsn(), autocommit=True) as conn:
            conn.execute("ALTER DATABASE conveyor SET synchronous_commit = on")
        settings = {
            **FAST,
            "CONVEYOR_SECRET_KEY": secrets.token_urlsafe(48),
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_BROKER_URL": broker_url,
            "CONVEYOR_BROKER_NAMESPACE": "conveyor-chaos",
            "CONVEYOR_REDIS_URL": self.events.url,
            "CONVEYOR_REDIS_PREFIX": "conveyor-chaos",
            **self.opts.settings,
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
            await asyncio.sleep(max(min(self.opts.fault_gap, until - loop.time()), 0))
            if loop.time() >= until:
                return
            t = loop.time()
            log(f"fault: {label}")
            await apply()
            self.counts.faults.append(label)
            log(f"  {label}: done in {loop.time() - t:.1f}s")


# --- the clients ----------------------------------------------------------------------------


class Clients:
    """`opts.clients` HTTP clients submitting at `opts.rate` jobs/s in all, over the web
    processes in turn; every submission is recorded before its first try."""

    def __init__(self, opts: Options, platform: Platform) -> None:
        self.opts = opts
        self.urls = platform.urls
        self.headers = {
            "Authorization": f"Bearer {platform.token}",
            "Content-Type": "application/json",
        }
        self.records: list[Submission] = []
        self.answers: Counter[str] = Counter()  # tries by HTTP status or exception
        self.seq = itertools.count(1)
        self.tag = f"{platform.broker}-{uuid.uuid4().hex[:8]}"
        self.in_flight = 0

    def new(self, rng: random.Random) -> tuple[Submission, bytes]:
        seq = next(self.seq)
        key = f"chaos-{self.tag}-{seq}" if rng.random() < KEYED else None
        draw = rng.random()
        document: dict[str, Any]
        if draw < ECHO:
            document = {"type": "system.echo", "payload": {"chaos": self.tag, "seq": seq}}
        elif draw < ECHO + SLEEP:
            seconds = round(rng.uniform(*SLEEP_SECONDS), 2)
            payload = {"seconds": seconds, "steps": rng.randint(*SLEEP_STEPS)}
            document = {"type": "system.sleep", "payload": payload}
        else:
            document = {
                "type": "system.echo",
                "payload": {"chaos": self.tag, "seq": seq},
                "delay_seconds": round(rng.uniform(*DELAY_SECONDS), 2),
            }
        sub = Submission(seq=seq, job_type=document["type"], key=key)
        self.records.append(sub)
        return sub, json.dumps(document).encode()

    async def client(self, index: int, until: float) -> None:
        """Submit at this client's share of the rate until `until` (no burst after a stall)."""
        loop = asyncio.get_running_loop()
        rng = random.Random(f"{self.opts.seed}-{index}")  # the same mix on each broker
        interval = self.opts.clients / self.opts.rate
        next_at = loop.time() + rng.uniform(0, interval)
        timeout = aiohttp.ClientTimeout(total=20, sock_connect=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for turn in itertools.count(index):
                await asyncio.sleep(max(next_at - loop.time(), 0))
                if loop.time() >= until:
                    return
                next_at = max(next_at + interval, loop.time() - interval)
                sub, body = self.new(rng)
                self.in_flight += 1
                try:
                    await self.submit(session, sub, body, turn)
                finally:
                    self.in_flight -= 1

    async def submit(
        self, session: aiohttp.ClientSession, sub: Submission, body: bytes, turn: int
    ) -> None:
        """POST until a 202; a keyed submission is tried again (on the other web process)
        after no answer, a 5xx or a 409, for up to RETRY_FOR s. Without a key, only a try
        that could not connect (or got a 429) is repeated: a try that got no answer may have
        created the job, and so may one that got a 5xx."""
        loop = asyncio.get_running_loop()
        headers = dict(self.headers)
        if sub.key is not None:
            headers["Idempotency-Key"] = sub.key
        give_up = loop.time() + RETRY_FOR
        while True:
            url = self.urls[(turn + sub.tries) % len(self.urls)]
            sub.tries += 1
            delay = min(0.1 * 2**sub.tries, 2.0) * random.uniform(0.5, 1.0)
            answer = "interrupted"
            try:
                async with session.post(f"{url}/v1/jobs", data=body, headers=headers) as r:
                    raw, status = await r.read(), r.status
                    retry_after = r.headers.get("Retry-After", "")
            except aiohttp.ClientConnectorError as exc:  # not connected: nothing was sent
                sub.connection_errors += 1
                answer = type(exc).__name__
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                sub.connection_errors += 1
                answer = type(exc).__name__
                if sub.key is None:
                    return
            else:
                answer = str(status)
                if status in (200, 202):
                    try:
                        sub.job_id = uuid.UUID(json.loads(raw)["id"])
                    except (ValueError, KeyError, TypeError):
                        sub.rejected = f"{status} without a job id: {raw[:200]!r}"
                    return
                if status == 409 and sub.key is not None:
                    sub.conflicts += 1
                elif status >= 500:
                    sub.server_errors += 1
                    if sub.key is None:
                        return
                    with contextlib.suppress(ValueError):
                        delay = min(float(retry_after), 5.0)
                elif status != 429:
                    sub.rejected = f"{status} {raw[:300].decode(errors='replace')}"
                    return
            finally:
                sub.last_error = answer
                self.answers[answer] += 1
            if loop.time() + delay > give_up:
                return
            await asyncio.sleep(delay)


# --- one broker's run -----------------------------------------------------------------------


@dataclass
class Outcome:
    broker: str
    clients: Clients
    tally: Tally
    counts: Counts
    drained: bool
    errors: Counter[str]


async def exercise(opts: Options, platform: Platform) -> tuple[Clients, bool]:
    """Load and faults for `opts.duration` s, then retries finished and the jobs drained."""
    loop = asyncio.get_running_loop()
    rng = random.Random(f"{opts.seed}-{platform.broker}-faults")
    start = loop.time()
    until = start + opts.duration
    stop = asyncio.Event()
    clients = Clients(opts, platform)
    supervisor = asyncio.create_task(platform.supervise(stop))
    faults = [
        asyncio.create_task(platform.kill_every("worker", opts.worker_kill_every, until, rng)),
        asyncio.create_task(platform.kill_every("web", opts.web_kill_every, until, rng)),
        asyncio.create_task(platform.server_faults(until)),
    ]
    load = [asyncio.create_task(clients.client(i, until)) for i in range(opts.clients)]
    tasks = [supervisor, *faults, *load]
    try:
        while not all(task.done() for task in faults + load):
            await asyncio.wait(faults + load, timeout=5.0)
            for task in tasks:  # a fault (or anything) that failed ends the run
                failure = task.exception() if task.done() else None
                if failure is not None:
                    raise failure
            records = clients.records
            log(
                f"  {loop.time() - start:.0f}s: {len(records)} submitted, "
                f"{sum(1 for s in records if s.job_id)} acknowledged, {clients.in_flight} in "
                f"flight, {await pending(platform)}; "
                f"{len(platform.counts.faults)} faults, {platform.counts.worker_kills} worker "
                f"and {platform.counts.web_kills} web kills"
            )
        log("faults over; waiting for every process to be ready")
        await asyncio.to_thread(wait_ready, platform)
        drained = await drain(platform, opts.drain)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name in list(platform.frozen):
            platform.procs.signal(name, signal.SIGCONT)
    return clients, drained


def wait_ready(platform: Platform) -> None:
    """Every process ready again; one that is not by START_TIMEOUT is reported, not fatal."""
    for name in platform.argv:
        try:
            wait_for(f"{name} to be ready", partial(platform.ready_now, name), START_TIMEOUT)
        except BenchError as exc:
            log(f"  {exc}; draining anyway")


async def pending(platform: Platform) -> str:
    """The jobs that wait or run now, by status ("?" while the database is down)."""
    try:
        async with await psycopg.AsyncConnection.connect(
            platform.pg.dsn("conveyor"), autocommit=True, connect_timeout=2
        ) as conn:
            cursor = await conn.execute(
                "SELECT status, count(*) FROM jobs WHERE status = ANY(%s) GROUP BY status",
                (sorted(PENDING),),
            )
            counts: dict[str, int] = dict(await cursor.fetchall())
    except psycopg.Error:
        return "? waiting or running"
    detail = ", ".join(f"{counts[s]} {s}" for s in sorted(counts))
    return f"{sum(counts.values())} waiting or running ({detail or 'none'})"


async def drain(platform: Platform, bound: float) -> bool:
    """Wait until no job is waiting or running (True), or `bound` s passed (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    next_report = loop.time()
    async with await psycopg.AsyncConnection.connect(
        platform.pg.dsn("conveyor"), autocommit=True
    ) as conn:
        while True:
            cursor = await conn.execute(PENDING_COUNT, (sorted(PENDING),))
            row = await cursor.fetchone()
            left = int(row[0]) if row else 0
            if left == 0:
                log("drained: no job waits or runs")
                return True
            if loop.time() >= next_report:
                log(f"  draining: {left} jobs wait or run")
                next_report = loop.time() + 5.0
            if loop.time() >= deadline:
                log(f"drain gave up after {bound:g}s with {left} jobs waiting or running")
                return False
            await asyncio.sleep(0.5)


def read_rows(platform: Platform) -> list[JobRow]:
    """Every job of the run with its count of `succeeded` events."""
    with psycopg.connect(platform.pg.dsn("conveyor"), autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT j.id, j.type, j.status, j.attempts, j.created_at, j.run_at, j.finished_at,
                   j.idempotency_key, j.payload->>'seq', j.error->>'type',
                   count(e.id) FILTER (WHERE e.kind = 'status' AND e.status = 'succeeded')
            FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id
            GROUP BY j.id
            """
        ).fetchall()
    return [
        JobRow(
            id=r[0],
            job_type=r[1],
            status=r[2],
            attempts=int(r[3]),
            due=max(_epoch(r[4]), _epoch(r[5]) if r[5] is not None else 0.0),
            finished_at=_epoch(r[6]) if r[6] is not None else None,
            idempotency_key=r[7],
            seq=int(r[8]) if r[8] is not None else None,
            error_type=r[9],
            succeeded_events=int(r[10]),
        )
        for r in rows
    ]


def _epoch(value: dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def run_broker(opts: Options, broker: str, log_dir: Path) -> Outcome:
    """Start one broker's platform, exercise it, check it, and remove all of it."""
    directory = log_dir / broker
    directory.mkdir()
    log(f"{broker}: starting private servers and processes (logs in {directory})")
    with contextlib.ExitStack() as stack:
        platform = Platform(opts, broker, directory, stack)
        platform.start()
        log(f"{broker}: {opts.duration:g}s of faults at {opts.rate:g} jobs/s")
        clients, drained = asyncio.run(exercise(opts, platform))
        rows = read_rows(platform)
        log(f"{broker}: stopping processes and servers")
    errors = Counter(row.error_type or "?" for row in rows if row.status == "failed")
    verdict = tally(clients.records, rows, opts.bound)
    return Outcome(broker, clients, verdict, platform.counts, drained, errors)


# --- output and main ------------------------------------------------------------------------


def report(outcome: Outcome) -> None:
    """The broker's figures on stdout; the first few cases of each problem on stderr."""
    t, b = outcome.tally, outcome.broker
    for what, cases in (
        ("lost", t.lost),
        ("wrongly failed", t.wrongly_failed),
        ("late", t.late),
        ("duplicated", t.duplicated),
        ("re-run", t.rerun),
    ):
        for case in cases[:5]:
            log(f"  {b} {what}: {case}")
        if len(cases) > 5:
            log(f"  {b} {what}: … and {len(cases) - 5} more")
    log(f"  {b} tries by answer: {dict(outcome.clients.answers.most_common())}")
    abandoned = Counter(s.last_error for s in outcome.clients.records if s.job_id is None)
    if abandoned:
        log(f"  {b} unacknowledged submissions by their last error: {dict(abandoned)}")
    if outcome.errors:
        log(f"  {b} failed jobs by error type: {dict(outcome.errors)}")
    faults = Counter(outcome.counts.faults)
    log(f"  {b} faults applied: {dict(faults)}")
    lines = [
        ("jobs_submitted", t.submitted, "jobs"),
        ("jobs_accepted", t.accepted, "jobs"),
        ("jobs_lost", len(t.lost), "jobs"),
        ("jobs_wrongly_failed", len(t.wrongly_failed), "jobs"),
        ("jobs_late", len(t.late), "jobs"),
        ("jobs_duplicated", len(t.duplicated), "jobs"),
        ("jobs_rerun", len(t.rerun), "jobs"),
        ("jobs_unacknowledged", t.unacknowledged, "jobs"),
        ("jobs_abandoned", t.abandoned, "jobs"),
        ("jobs_given_up", t.given_up, "jobs"),
        ("delay_p99", fmt(percentile(t.delays, 99), 2), "s"),
        ("delay_max", fmt(t.delay_max, 2), "s"),
        ("submit_requests", t.requests, "req"),
        ("client_errors", t.client_errors, "req"),
        ("client_rejected", t.rejected, "req"),
        ("faults", len(outcome.counts.faults), "faults"),
        ("worker_kills", outcome.counts.worker_kills, "kills"),
        ("web_kills", outcome.counts.web_kills, "kills"),
        ("process_exits", outcome.counts.exits, "exits"),
        ("drained", int(outcome.drained), "bool"),
    ]
    for name, value, unit in lines:
        print(f"{b}_{name}: {value} {unit}")
    sys.stdout.flush()


def header(opts: Options) -> None:
    settings = {**FAST, **opts.settings}
    print(f"# conveyor chaos benchmark ({source_version()})")
    print(
        f"# brokers: {', '.join(opts.brokers)}; private PostgreSQL, announcements Redis and "
        f"broker per run; {WEBS} web processes, {WORKERS} workers of 1 process x "
        f"{opts.threads} threads"
    )
    print(
        f"# load: {opts.duration:g}s at {opts.rate:g} jobs/s from {opts.clients} clients; "
        f"{ECHO:.0%} system.echo, {SLEEP:.0%} system.sleep {SLEEP_SECONDS[0]:g}-"
        f"{SLEEP_SECONDS[1]:g}s in {SLEEP_STEPS[0]}-{SLEEP_STEPS[1]} steps, "
        f"{1 - ECHO - SLEEP:.0%} echo delayed {DELAY_SECONDS[0]:g}-{DELAY_SECONDS[1]:g}s; "
        f"{KEYED:.0%} with an Idempotency-Key, retried for up to {RETRY_FOR:g}s"
    )
    print(
        f"# faults: a worker SIGKILLed every ~{opts.worker_kill_every:g}s, a web process every "
        f"~{opts.web_kill_every:g}s; one after another, {opts.fault_gap:g}s apart: postgres "
        "restart -m fast, broker SIGKILL, events redis restart, worker frozen past its lease, "
        "postgres restart -m immediate, broker restart, events redis SIGKILL"
    )
    print(f"# settings: {' '.join(f'{k}={v}' for k, v in sorted(settings.items()))}")
    print(
        f"# late: finished more than {opts.bound:g}s after due (created, or run_at); "
        f"drain up to {opts.drain:g}s; seed {opts.seed}"
    )
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="bench/chaos.py",
        description="Conveyor under faults: jobs lost, failed, late or duplicated, per broker.",
    )
    p.add_argument(
        "--broker", choices=(*BROKERS, "both"), default="both", help="default: both, in turn"
    )
    p.add_argument("--duration", type=float, default=90.0, help="seconds of faults (default 90)")
    p.add_argument("--rate", type=float, default=5.0, help="jobs submitted per second (5)")
    p.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    p.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    p.add_argument(
        "--bound", type=float, default=60.0, help="seconds from due to finished (default 60)"
    )
    p.add_argument(
        "--drain", type=float, default=120.0, help="longest wait for the jobs after (120)"
    )
    p.add_argument("--worker-kill-every", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--web-kill-every", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument(
        "--fault-gap", type=float, default=7.0, help="seconds between server faults (default 7)"
    )
    p.add_argument("--seed", type=int, default=1, help="of the job mix and the victims")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="CONVEYOR_NAME=VALUE",
        help="a setting of the web and worker processes (repeatable)",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the process logs")
    a = p.parse_args(argv)
    for name in ("duration", "rate", "bound", "worker_kill_every", "web_kill_every"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("clients", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.drain < 0 or a.fault_gap < 0:
        p.error("--drain and --fault-gap must not be negative")
    settings = {}
    for item in a.set:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("CONVEYOR_"):
            p.error(f"--set takes CONVEYOR_NAME=VALUE, not {item!r}")
        settings[name] = value
    return Options(
        brokers=BROKERS if a.broker == "both" else (a.broker,),
        duration=a.duration,
        rate=a.rate,
        clients=a.clients,
        threads=a.threads,
        bound=a.bound,
        drain=a.drain,
        worker_kill_every=a.worker_kill_every,
        web_kill_every=a.web_kill_every,
        fault_gap=a.fault_gap,
        seed=a.seed,
        settings=settings,
        keep_logs=a.keep_logs,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="conveyor-chaos-"))
    outcomes: list[Outcome] = []
    failed = True
    try:
        with interrupt_on_sigterm():
            header(opts)
            for broker in opts.brokers:
                outcome = run_broker(opts, broker, log_dir)
                outcomes.append(outcome)
                report(outcome)
        failed = False
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    except Exception:
        log(f"FAILED with an unexpected error (cleaned up):\n{traceback.format_exc()}")
        return 2
    finally:
        if failed or opts.keep_logs:
            log(f"process logs: {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    bad = [o.broker for o in outcomes if not o.tally.passed]
    if bad:
        log(f"jobs lost, wrongly failed, late or duplicated on: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
