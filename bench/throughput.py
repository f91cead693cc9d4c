"""End-to-end throughput of Conveyor, next to a bare Dramatiq baseline on the same broker.

By default it starts everything itself on the local services: a fresh PostgreSQL database
(migrated with `conveyor db upgrade`), a RabbitMQ vhost (rabbitmqctl) or a Redis broker
namespace, a Redis prefix, an admin user and token, `conveyor web` and
`dramatiq conveyor.workers.system --processes P --threads T`, all configured by CONVEYOR_*
environment variables; all of it is removed at the end, on errors and SIGINT/SIGTERM too.
With `--url URL --token TOKEN` it measures a running deployment instead.

It submits a warm-up batch, then N `system.echo` jobs over HTTP from C concurrent clients (one
aiohttp session and connection pool), and waits until all of them finished: one COUNT query on
the database every 50 ms (against a deployment without `--database-url`:
`GET /v1/jobs?status=queued,running,retrying&limit=1`). It checks that every job succeeded once:
`attempts == 1` (and, with the database, exactly one `running` and one `succeeded` event).
submit_rate = N / (first POST -> last 202); e2e_rate = N / (first POST -> the last finished_at);
latency = a job's finished_at - the client's time just before its POST (same machine clock).

Then (with its own web and worker stopped) the same N no-op messages go straight through
Dramatiq on the same broker: `bench/bare_actor.py` has a no-op actor on queue `bench-bare` and a
plain broker with Dramatiq's defaults. The benchmark pre-fills the queue with `actor.send()`,
starts `dramatiq bench.bare_actor` with the same processes and threads and measures the drain
rate, N / (first job -> last job), from timestamps the actor writes to Redis.

Standard output: a `#` header with the configuration, then one `name: value unit` line per
figure. Progress and diagnostics go to standard error.

    .venv/bin/python bench/throughput.py [-n 5000] [--concurrency 32] [--processes 1]
        [--threads 8] [--broker rabbitmq|redis] [--url URL --token TOKEN [--broker-url URL]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/throughput.py`
    sys.path.insert(0, str(ROOT))

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

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
JOB_TYPE = "system.echo"
JOB_QUEUE = "system"
PENDING = ("queued", "running", "retrying")
FINISHED = ("succeeded", "failed", "cancelled")
POLL_SECONDS = 0.05
BARE_POLL_SECONDS = 0.01
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Options:
    n: int
    concurrency: int
    processes: int
    threads: int
    broker: str
    warmup: int
    idle: int
    timeout: float
    url: str | None
    token: str | None
    broker_url: str | None
    database_url: str | None
    redis_url: str
    keep_logs: bool


@dataclass
class Deployment:
    """Where the jobs go, and how to look at them."""

    url: str
    token: str
    pg_dsn: str | None  # libpq DSN of the job database, if we may poll it
    broker_url: str | None  # for the bare baseline; None skips it
    broker_namespace: str  # Redis broker key prefix of the bare baseline
    redis_prefix: str  # prefix of every key this run writes to Redis
    description: str
    db_name: str | None = None  # set when we started the processes (CPU accounting)


# --- local services --------------------------------------------------------------------------


def check_services(redis_url: str, need_rabbit: bool) -> None:
    redis_parts = urlsplit(redis_url)
    services = [
        ("PostgreSQL", PG_HOST, PG_PORT),
        ("Redis", redis_parts.hostname or "127.0.0.1", redis_parts.port or 6379),
    ]
    if need_rabbit:
        services.append(("RabbitMQ", RABBIT_HOST, RABBIT_PORT))
    for name, host, port in services:
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            raise BenchError(f"{name} is not reachable on {host}:{port}: {exc}") from None


def pg_admin() -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
    )


def rabbitmqctl(*args: str) -> None:
    try:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        out = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()
        raise BenchError(f"rabbitmqctl {' '.join(args)} failed: {out.strip()}") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"rabbitmqctl {' '.join(args)} timed out") from None


def delete_vhost(vhost: str, patience: float = 60.0) -> None:
    """Delete the vhost, retrying while RabbitMQ is briefly down (a restart, an outage test)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            rabbitmqctl("delete_vhost", vhost)
            return
        except BenchError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def delete_redis_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def start_local(opts: Options, stack: contextlib.ExitStack, procs: Processes) -> Deployment:
    """Fresh database, vhost and prefix; migrated schema, admin token, web and worker."""
    run_id = uuid.uuid4().hex[:8]
    prefix = f"conveyor-bench-{run_id}"
    check_services(opts.redis_url, opts.broker == "rabbitmq")

    db_name = f"conveyor_bench_{run_id}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')

    def drop_db() -> None:
        with pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

    stack.callback(cleanup(f"database {db_name}", drop_db))
    stack.callback(
        cleanup(f"Redis keys {prefix}*", lambda: delete_redis_keys(opts.redis_url, prefix))
    )

    if opts.broker == "rabbitmq":
        vhost = prefix
        rabbitmqctl("add_vhost", vhost)
        stack.callback(cleanup(f"vhost {vhost}", lambda: delete_vhost(vhost)))
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        broker_url = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/{quote(vhost, safe='')}"
        where = f"RabbitMQ vhost {vhost}"
    else:
        broker_url = opts.redis_url
        where = f"Redis broker namespace {prefix}"

    port = free_port()
    database_url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{db_name}"
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_BROKER_URL": broker_url,
        "CONVEYOR_BROKER_NAMESPACE": prefix,
        "CONVEYOR_REDIS_URL": opts.redis_url,
        "CONVEYOR_REDIS_PREFIX": prefix,
        "CONVEYOR_SECRET_KEY": secrets.token_urlsafe(48),
        "CONVEYOR_HOST": "127.0.0.1",
        "CONVEYOR_PORT": str(port),
        "CONVEYOR_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    # Conveyor's processes run in the log directory: settings come from the environment
    # only, never from a `.env` that happens to be in the checkout.
    cwd = procs.log_dir
    conveyor = executable("conveyor", "conveyor.cli")
    log(f"database {db_name}: migrating")
    run_cli([*conveyor, "db", "upgrade"], env, cwd)
    email = "bench-admin@example.com"
    run_cli([*conveyor, "users", "create", email, "--role", "admin"], env, cwd)
    token = run_cli([*conveyor, "tokens", "issue", email], env, cwd).strip().splitlines()[-1]

    stack.callback(procs.stop_all)
    url = f"http://127.0.0.1:{port}"
    procs.start("web", [*conveyor, "web"], env, cwd)
    wait_for(
        f"conveyor web on {url}/readyz",
        lambda: _http_ok(f"{url}/readyz"),
        START_TIMEOUT,
        alive=lambda: procs.check("web"),
    )
    dramatiq_cli = executable("dramatiq", "dramatiq")
    worker_argv = [
        *dramatiq_cli,
        "conveyor.workers.system",
        "--processes",
        str(opts.processes),
        "--threads",
        str(opts.threads),
    ]
    procs.start("worker", worker_argv, env, cwd)
    wait_for(
        f"{opts.processes} worker process(es) consuming queue {JOB_QUEUE!r}",
        lambda: consumers_ready(broker_url, prefix, opts.redis_url, opts.processes),
        START_TIMEOUT,
        interval=0.25,
        alive=lambda: procs.check("worker"),
    )
    return Deployment(
        url=url,
        token=token,
        pg_dsn=f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={db_name}",
        broker_url=broker_url,
        broker_namespace=f"{prefix}-bare",
        redis_prefix=prefix,
        description=f"local processes: PostgreSQL database {db_name}, {where}, "
        f"Redis prefix {prefix}, web on {url}",
        db_name=db_name,
    )


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


def consumers_ready(broker_url: str, namespace: str, redis_url: str, processes: int) -> bool:
    """Whether `processes` worker processes consume the job queue."""
    if broker_url.startswith(("amqp://", "amqps://")):
        import pika

        params = pika.URLParameters(broker_url)
        params.socket_timeout = 2
        params.connection_attempts = 1
        connection = pika.BlockingConnection(params)
        try:
            frame = connection.channel().queue_declare(JOB_QUEUE, passive=True)
            return int(frame.method.consumer_count) >= processes
        finally:
            with contextlib.suppress(Exception):
                connection.close()
    # Redis broker: each process's broker has an id in the heartbeat set once it fetched.
    client = redis.Redis.from_url(broker_url if broker_url.startswith("redis") else redis_url)
    try:
        return int(client.zcard(f"{namespace}:__heartbeats__")) >= processes
    finally:
        client.close()


# --- CPU accounting (Linux /proc; local processes only) -------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(selector: Callable[[int, str], bool]) -> float:
    """User + system CPU seconds of the live processes whose (process group, command line)
    the selector accepts; 0 where /proc is missing."""
    total = 0
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if selector(int(fields[2]), cmdline):  # fields[2]: process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def group_meter(pgid: int) -> Callable[[], float]:
    """CPU seconds of one process group (a started command and what it forked)."""
    return lambda: cpu_seconds(lambda group, _cmdline: group == pgid)


def process_meters(procs: Processes, deployment: Deployment) -> dict[str, Callable[[], float]]:
    """CPU-seconds counters of the web process, the worker processes and the Postgres
    backends of our database, when the benchmark started them."""
    if deployment.db_name is None or not Path("/proc").is_dir():
        return {}
    meters: dict[str, Callable[[], float]] = {
        name: group_meter(procs.running[name].proc.pid)
        for name in ("web", "worker")
        if name in procs.running
    }
    marker = f" {deployment.db_name} "
    meters["postgres"] = lambda: cpu_seconds(
        lambda _group, cmdline: cmdline.startswith("postgres:") and marker in cmdline
    )
    return meters


# --- the HTTP side ---------------------------------------------------------------------------


@dataclass
class Submission:
    """One POST: the client time just before it, and the job it created."""

    index: int
    sent_at: float  # time.time() just before the POST
    job_id: uuid.UUID | None = None
    status: int = 0
    error: str | None = None


@dataclass
class SubmitResult:
    submissions: list[Submission]
    started: float
    ended: float  # time.time() after the last answer

    @property
    def accepted(self) -> list[Submission]:
        return [s for s in self.submissions if s.job_id is not None]

    @property
    def failed(self) -> list[Submission]:
        return [s for s in self.submissions if s.job_id is None]


async def submit_jobs(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    n: int,
    concurrency: int,
    tag: str,
    on_done: Callable[[int], None] = lambda _: None,
) -> SubmitResult:
    """POST `n` echo jobs from `concurrency` clients sharing one connection pool."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [
        json.dumps({"type": JOB_TYPE, "payload": {"bench": tag, "i": i}}).encode() for i in range(n)
    ]
    submissions: list[Submission | None] = [None] * n
    indices = iter(range(n))
    counter = [0]

    async def client() -> None:
        for i in indices:
            sub = Submission(i, time.time())
            submissions[i] = sub
            try:
                async with session.post(f"{url}/v1/jobs", data=bodies[i], headers=headers) as r:
                    raw = await r.read()
                    sub.status = r.status
                if r.status == 202:
                    sub.job_id = uuid.UUID(json.loads(raw)["id"])
                else:
                    sub.error = raw[:200].decode(errors="replace")
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                sub.error = repr(exc)
            counter[0] += 1
            on_done(counter[0])

    started = time.time()
    await asyncio.gather(*(client() for _ in range(min(concurrency, n))))
    ended = time.time()
    done = [s for s in submissions if s is not None]
    return SubmitResult(done, min((s.sent_at for s in done), default=started), ended)


@dataclass
class JobRow:
    job_id: uuid.UUID
    status: str
    attempts: int
    created_at: float
    finished_at: float | None
    running_events: int | None = None  # only when read from the database
    succeeded_events: int | None = None


class Tracker:
    """Counts finished jobs and reads job rows: from the database or over HTTP."""

    def __init__(self, deployment: Deployment, session: aiohttp.ClientSession) -> None:
        self.deployment = deployment
        self.session = session
        self.headers = {"Authorization": f"Bearer {deployment.token}"}
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> Tracker:
        if self.deployment.pg_dsn is not None:
            self._conn = await psycopg.AsyncConnection.connect(
                self.deployment.pg_dsn, autocommit=True
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def finished_count(self) -> int | None:
        """Echo jobs that finished (any outcome); None without database access."""
        if self._conn is None:
            return None
        cursor = await self._conn.execute(
            "SELECT count(*) FROM jobs WHERE type = %s AND status = ANY(%s)",
            (JOB_TYPE, list(FINISHED)),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def any_pending(self) -> bool:
        """Whether any echo job still waits or runs (the HTTP way)."""
        async with self.session.get(
            f"{self.deployment.url}/v1/jobs",
            params={"status": ",".join(PENDING), "type": JOB_TYPE, "limit": "1"},
            headers=self.headers,
        ) as r:
            body = await r.json()
            if r.status != 200:
                raise BenchError(f"GET /v1/jobs answered {r.status}: {body}")
        return bool(body["items"])

    async def wait_finished(
        self,
        base: int | None,
        submitting: asyncio.Task[SubmitResult],
        bound: float,
        alive: Callable[[], None],
    ) -> SubmitResult:
        """Return once the submission ended and every accepted job finished.

        With the database: `base` + accepted rows finished; over HTTP: no echo job pending.
        Each of the two waits is bounded by `bound` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        next_report = loop.time() + 5.0
        result: SubmitResult | None = None
        target: int | None = None
        while True:
            alive()
            count = await self.finished_count()
            if result is None and submitting.done():
                result = submitting.result()  # raises its error
                deadline = loop.time() + bound
                if base is not None:
                    target = base + len(result.accepted)
                log(
                    f"  {len(result.accepted)} accepted in {result.ended - result.started:.2f}s;"
                    " waiting for them to finish"
                )
                if not result.accepted:
                    first = result.failed[0] if result.failed else None
                    detail = f"{first.status} {first.error}" if first else "nothing sent"
                    raise BenchError(f"no job was accepted; first answer: {detail}")
            if result is not None:
                if count is not None and target is not None:
                    if count >= target:
                        return result
                elif not await self.any_pending():
                    return result
            now = loop.time()
            if now > deadline:
                if result is None:
                    submitting.cancel()
                    raise BenchError(f"timed out after {bound:g}s submitting the jobs")
                raise BenchError(
                    f"timed out after {bound:g}s waiting for the jobs to finish "
                    f"({count} of {target} finished)"
                )
            if now >= next_report and count is not None:
                done = f"{count - base} finished" if base is not None else ""
                log(f"  {done}")
                next_report = now + 5.0
            await asyncio.sleep(POLL_SECONDS)

    async def rows(self, ids: Sequence[uuid.UUID]) -> list[JobRow]:
        if self._conn is not None:
            return await self._rows_db(ids)
        return await self._rows_http(ids)

    async def _rows_db(self, ids: Sequence[uuid.UUID]) -> list[JobRow]:
        assert self._conn is not None
        cursor = await self._conn.execute(
            """
            SELECT j.id, j.status, j.attempts, j.created_at, j.finished_at,
                   count(*) FILTER (WHERE e.kind = 'status' AND e.status = 'running'),
                   count(*) FILTER (WHERE e.kind = 'status' AND e.status = 'succeeded')
            FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id
            WHERE j.id = ANY(%s)
            GROUP BY j.id
            """,
            (list(ids),),
        )
        return [
            JobRow(
                job_id=r[0],
                status=r[1],
                attempts=int(r[2]),
                created_at=_epoch(r[3]),
                finished_at=_epoch(r[4]) if r[4] is not None else None,
                running_events=int(r[5]),
                succeeded_events=int(r[6]),
            )
            for r in await cursor.fetchall()
        ]

    async def _rows_http(self, ids: Sequence[uuid.UUID]) -> list[JobRow]:
        """Page through the echo jobs, newest first, down to the oldest of ours."""
        wanted = set(ids)
        oldest = min(ids)
        found: list[JobRow] = []
        params = {"type": JOB_TYPE, "limit": "500"}
        while True:
            async with self.session.get(
                f"{self.deployment.url}/v1/jobs", params=params, headers=self.headers
            ) as r:
                body = await r.json()
                if r.status != 200:
                    raise BenchError(f"GET /v1/jobs answered {r.status}: {body}")
            for item in body["items"]:
                job_id = uuid.UUID(item["id"])
                if job_id in wanted:
                    found.append(
                        JobRow(
                            job_id=job_id,
                            status=item["status"],
                            attempts=int(item["attempts"]),
                            created_at=_epoch(item["created_at"]),
                            finished_at=_epoch(item["finished_at"])
                            if item["finished_at"]
                            else None,
                        )
                    )
            items = body["items"]
            if not body.get("next_cursor") or not items or uuid.UUID(items[-1]["id"]) <= oldest:
                return found
            params = {**params, "cursor": body["next_cursor"]}


def _epoch(value: dt.datetime | str) -> float:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


@dataclass
class HttpFigures:
    submitted: int
    accepted: int
    submit_errors: int
    submit_rate: float
    e2e_seconds: float
    e2e_rate: float
    latency_p50: float
    latency_p99: float
    row_latency_p50: float
    row_latency_p99: float
    bad: int
    warmup_seconds: float
    cpu: dict[str, float]  # CPU seconds per process kind during the measured run
    idle_p50: float = math.nan
    idle_p99: float = math.nan


async def run_http(
    opts: Options,
    deployment: Deployment,
    procs: Processes,
    meters: dict[str, Callable[[], float]],
) -> HttpFigures:
    connector = aiohttp.TCPConnector(limit=opts.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        Tracker(deployment, session) as tracker,
    ):

        async def phase(n: int, tag: str) -> SubmitResult:
            """Submit n jobs and wait until they all finished."""
            base = await tracker.finished_count()
            progress_every = max(n // 5, 1)

            def on_done(k: int) -> None:
                if k % progress_every == 0 and k != n:
                    log(f"  {k}/{n} submitted")

            submitting = asyncio.create_task(
                submit_jobs(
                    session, deployment.url, deployment.token, n, opts.concurrency, tag, on_done
                )
            )
            try:
                return await tracker.wait_finished(base, submitting, opts.timeout, procs.check_all)
            finally:
                if not submitting.done():
                    submitting.cancel()
                    with contextlib.suppress(BaseException):
                        await submitting

        tag = uuid.uuid4().hex[:8]
        warmup_seconds = 0.0
        if opts.warmup:
            log(f"warm-up: {opts.warmup} jobs")
            t = time.monotonic()
            await phase(opts.warmup, f"warmup-{tag}")
            warmup_seconds = time.monotonic() - t

        log(f"measured run: {opts.n} jobs from {opts.concurrency} clients")
        cpu_before = {name: meter() for name, meter in meters.items()}
        result = await phase(opts.n, tag)
        cpu = {name: meter() - cpu_before[name] for name, meter in meters.items()}
        accepted = result.accepted
        ids = [s.job_id for s in accepted if s.job_id is not None]
        rows = {row.job_id: row for row in await tracker.rows(ids)}
        idle = await idle_latencies(session, deployment, opts.idle)

    for failed in result.failed[:5]:
        log(f"  submit #{failed.index} failed: {failed.status} {failed.error}")

    bad: list[str] = []
    latencies: list[float] = []
    row_latencies: list[float] = []
    finished_at: list[float] = []
    for sub in accepted:
        assert sub.job_id is not None
        row = rows.get(sub.job_id)
        if row is None:
            bad.append(f"{sub.job_id}: not found")
            continue
        problems = []
        if row.status != "succeeded":
            problems.append(f"status {row.status}")
        if row.attempts != 1:
            problems.append(f"attempts {row.attempts}")
        if row.running_events is not None and row.running_events != 1:
            problems.append(f"{row.running_events} 'running' events")
        if row.succeeded_events is not None and row.succeeded_events != 1:
            problems.append(f"{row.succeeded_events} 'succeeded' events")
        if problems:
            bad.append(f"{sub.job_id}: {', '.join(problems)}")
        if row.finished_at is not None:
            finished_at.append(row.finished_at)
            latencies.append(row.finished_at - sub.sent_at)
            row_latencies.append(row.finished_at - row.created_at)
    for line in bad[:10]:
        log(f"  not succeeded exactly once: {line}")
    if len(bad) > 10:
        log(f"  … and {len(bad) - 10} more")

    submit_seconds = result.ended - result.started
    e2e_seconds = (max(finished_at) - result.started) if finished_at else math.nan
    succeeded = sum(1 for r in rows.values() if r.status == "succeeded")
    return HttpFigures(
        submitted=len(result.submissions),
        accepted=len(accepted),
        submit_errors=len(result.failed),
        submit_rate=len(accepted) / submit_seconds if submit_seconds > 0 else math.nan,
        e2e_seconds=e2e_seconds,
        e2e_rate=succeeded / e2e_seconds if e2e_seconds > 0 else math.nan,
        latency_p50=percentile(latencies, 50) * 1000,
        latency_p99=percentile(latencies, 99) * 1000,
        row_latency_p50=percentile(row_latencies, 50) * 1000,
        row_latency_p99=percentile(row_latencies, 99) * 1000,
        bad=len(bad),
        warmup_seconds=warmup_seconds,
        cpu=cpu,
        idle_p50=percentile(idle, 50) * 1000,
        idle_p99=percentile(idle, 99) * 1000,
    )


async def idle_latencies(
    session: aiohttp.ClientSession, deployment: Deployment, n: int
) -> list[float]:
    """Round trips of `n` jobs sent one at a time with `Prefer: wait=10` on an idle system:
    POST until the answer with the succeeded job (service time, no queueing)."""
    if n <= 0:
        return []
    log(f"idle latency: {n} jobs one at a time, Prefer: wait=10")
    headers = {"Authorization": f"Bearer {deployment.token}", "Prefer": "wait=10"}
    times = []
    for i in range(n):
        started = time.perf_counter()
        async with session.post(
            f"{deployment.url}/v1/jobs",
            json={"type": JOB_TYPE, "payload": {"idle": i}},
            headers=headers,
        ) as response:
            body = await response.json()
        if response.status == 200 and body.get("status") == "succeeded":
            times.append(time.perf_counter() - started)
    if len(times) < n:
        log(f"  {n - len(times)} idle jobs did not finish within their wait")
    return times


# --- the bare Dramatiq baseline --------------------------------------------------------------


@dataclass
class BareFigures:
    enqueue_rate: float
    drain_rate: float
    drain_seconds: float
    worker_cpu: float | None  # CPU seconds of the bare worker from its first job to the last


def run_bare(
    opts: Options, deployment: Deployment, procs: Processes, stack: contextlib.ExitStack
) -> BareFigures:
    assert deployment.broker_url is not None
    broker_url = deployment.broker_url
    key = f"{deployment.redis_prefix}:bare"
    bare_env = {
        "BENCH_BARE_BROKER_URL": broker_url,
        "BENCH_BARE_NAMESPACE": deployment.broker_namespace,
        "BENCH_BARE_REDIS_URL": opts.redis_url,
        "BENCH_BARE_KEY": key,
        "BENCH_BARE_N": str(opts.n),
    }
    os.environ.update(bare_env)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    bare = importlib.import_module("bench.bare_actor")
    counters = redis.Redis.from_url(opts.redis_url)
    keys = (f"{key}:done", f"{key}:t0", f"{key}:t1")
    stack.callback(counters.close)

    def drop_counters() -> None:
        counters.delete(*keys)

    stack.callback(cleanup("the bare counters", drop_counters))
    counters.delete(*keys)
    if opts.url is not None:  # a deployment's broker: remove what we leave on it
        stack.callback(
            cleanup("the bench-bare queue", lambda: purge_bare_queue(broker_url, deployment))
        )

    log(f"bare dramatiq: pre-filling {opts.n} messages on queue {bare.QUEUE!r}")
    t = time.perf_counter()
    for _ in range(opts.n):
        bare.noop.send()
    enqueue_seconds = time.perf_counter() - t
    bare.broker.close()

    argv = [
        *executable("dramatiq", "dramatiq"),
        "bench.bare_actor",
        "--processes",
        str(opts.processes),
        "--threads",
        str(opts.threads),
    ]
    started = procs.start("bare-worker", argv, {**os.environ, **bare_env}, ROOT)
    meter = group_meter(started.proc.pid) if Path("/proc").is_dir() else None
    cpu_first: float | None = None
    deadline = time.monotonic() + opts.timeout
    next_report = time.monotonic() + 5.0
    while True:
        procs.check("bare-worker")
        done = int(counters.get(f"{key}:done") or 0)
        if cpu_first is None and done > 0 and meter is not None:
            cpu_first = meter()
        if done >= opts.n and counters.exists(f"{key}:t1"):
            break
        if time.monotonic() > deadline:
            raise BenchError(
                f"timed out after {opts.timeout:g}s waiting for the bare drain "
                f"({done} of {opts.n} processed)"
            )
        if time.monotonic() >= next_report:
            log(f"  {done}/{opts.n} processed")
            next_report = time.monotonic() + 5.0
        time.sleep(BARE_POLL_SECONDS)
    worker_cpu = meter() - cpu_first if meter is not None and cpu_first is not None else None
    procs.stop("bare-worker")
    t0 = float(counters.get(f"{key}:t0") or 0)
    t1 = float(counters.get(f"{key}:t1") or 0)
    drain_seconds = t1 - t0
    return BareFigures(
        enqueue_rate=opts.n / enqueue_seconds if enqueue_seconds > 0 else math.nan,
        drain_rate=opts.n / drain_seconds if drain_seconds > 0 else math.nan,
        drain_seconds=drain_seconds,
        worker_cpu=worker_cpu,
    )


def purge_bare_queue(broker_url: str, deployment: Deployment) -> None:
    if broker_url.startswith(("amqp://", "amqps://")):
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        try:
            channel = connection.channel()
            for name in ("bench-bare", "bench-bare.DQ", "bench-bare.XQ"):
                channel.queue_delete(name)
        finally:
            connection.close()
    else:
        delete_redis_keys(broker_url, f"{deployment.broker_namespace}:")


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="End-to-end throughput of Conveyor next to a bare Dramatiq baseline.",
    )
    p.add_argument("-n", type=int, default=5000, help="jobs to submit (default 5000)")
    p.add_argument("--concurrency", type=int, default=32, help="HTTP clients (default 32)")
    p.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--threads", type=int, default=8, help="threads per worker (default 8)")
    p.add_argument(
        "--broker",
        choices=("rabbitmq", "redis"),
        default="rabbitmq",
        help="broker of the processes it starts (default rabbitmq)",
    )
    p.add_argument(
        "--warmup", type=int, default=200, help="jobs run before measuring (default 200)"
    )
    p.add_argument(
        "--idle",
        type=int,
        default=200,
        help="jobs sent one at a time after the run, for idle latency (default 200)",
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, help="bound of each wait, seconds (default 300)"
    )
    p.add_argument("--url", help="a running deployment's base URL (start nothing)")
    p.add_argument("--token", help="bearer token for --url (an admin's sees every job)")
    p.add_argument(
        "--broker-url", help="with --url: that deployment's broker, for the bare baseline"
    )
    p.add_argument(
        "--database-url", help="with --url: its database, polled instead of GET /v1/jobs"
    )
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis of events and counters")
    p.add_argument("--keep-logs", action="store_true", help="keep the process logs")
    a = p.parse_args(argv)
    if a.url and not a.token:
        p.error("--url needs --token")
    if not a.url and (a.token or a.broker_url or a.database_url):
        p.error("--token, --broker-url and --database-url go with --url")
    for name in ("n", "concurrency", "processes", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    return Options(
        n=a.n,
        concurrency=a.concurrency,
        processes=a.processes,
        threads=a.threads,
        broker=a.broker,
        warmup=max(a.warmup, 0),
        idle=max(a.idle, 0),
        timeout=a.timeout,
        url=a.url.rstrip("/") if a.url else None,
        token=a.token,
        broker_url=a.broker_url,
        database_url=a.database_url,
        redis_url=a.redis_url,
        keep_logs=a.keep_logs,
    )


def remote_deployment(opts: Options) -> Deployment:
    assert opts.url is not None and opts.token is not None
    run_id = uuid.uuid4().hex[:8]
    pg_dsn = None
    if opts.database_url:
        pg_dsn = opts.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    return Deployment(
        url=opts.url,
        token=opts.token,
        pg_dsn=pg_dsn,
        broker_url=opts.broker_url,
        broker_namespace=f"bench-bare-{run_id}",
        redis_prefix=f"bench-{run_id}",
        description=f"running deployment at {opts.url}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    procs = Processes(log_dir)
    ok = False
    try:
        with interrupt_on_sigterm(), contextlib.ExitStack() as stack:
            stack.callback(procs.stop_all)
            try:
                ok = run(opts, procs, stack)
            except BenchError:
                for name in list(procs.running):
                    log(f"last lines of {name} ({procs.running[name].log_path}):")
                    print(procs.tail(name), file=sys.stderr)
                raise
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    except Exception:
        log(f"FAILED with an unexpected error (cleaned up):\n{traceback.format_exc()}")
        return 1
    finally:
        if ok and not opts.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            log(f"process logs: {log_dir}")
    return 0 if ok else 1


def run(opts: Options, procs: Processes, stack: contextlib.ExitStack) -> bool:
    """The whole benchmark; prints the figures. True if every job succeeded once."""
    if opts.url is None:
        deployment = start_local(opts, stack, procs)
    else:
        deployment = remote_deployment(opts)
    if opts.url is None:
        worker = (
            f"workers {opts.processes}x{opts.threads} (processes x threads); broker {opts.broker}"
        )
    elif deployment.broker_url is not None:
        worker = (
            f"bare baseline {opts.processes}x{opts.threads} (processes x threads) on --broker-url"
        )
    else:
        worker = "the deployment's own workers; no bare baseline (no --broker-url)"
    print(f"# conveyor throughput benchmark ({source_version()})")
    print(f"# target: {deployment.description}")
    print(
        f"# jobs: {opts.n} x {JOB_TYPE}, {opts.concurrency} HTTP clients, "
        f"warm-up {opts.warmup}; {worker}"
    )
    print(
        "# latency: client time just before the POST -> the row's finished_at; "
        "row_latency: the row's created_at -> finished_at"
    )
    if deployment.db_name is not None:
        print(
            "# cpu_*: CPU (user+sys) of the web process, the worker processes and our Postgres "
            "backends during the measured run, per job"
        )
    sys.stdout.flush()
    meters = process_meters(procs, deployment)
    figures = asyncio.run(run_http(opts, deployment, procs, meters))
    if opts.url is None:  # the baseline gets the machine to itself
        procs.stop("worker")
        procs.stop("web")
    bare = None
    if deployment.broker_url is not None:
        bare = run_bare(opts, deployment, procs, stack)
    print(f"submit_rate: {fmt(figures.submit_rate)} req/s")
    print(f"e2e_rate: {fmt(figures.e2e_rate)} jobs/s")
    print(f"e2e_time: {fmt(figures.e2e_seconds, 2)} s")
    print(f"latency_p50: {fmt(figures.latency_p50)} ms")
    print(f"latency_p99: {fmt(figures.latency_p99)} ms")
    print(f"row_latency_p50: {fmt(figures.row_latency_p50)} ms")
    print(f"row_latency_p99: {fmt(figures.row_latency_p99)} ms")
    print(f"idle_latency_p50: {fmt(figures.idle_p50)} ms")
    print(f"idle_latency_p99: {fmt(figures.idle_p99)} ms")
    print(f"submit_errors: {figures.submit_errors} req")
    print(f"not_succeeded_once: {figures.bad} jobs")
    jobs = max(figures.accepted, 1)
    for name, seconds in figures.cpu.items():
        print(f"cpu_{name}: {fmt(seconds / jobs * 1000, 2)} ms/job")
    if bare is not None:
        print(f"bare_enqueue_rate: {fmt(bare.enqueue_rate)} msgs/s")
        print(f"bare_dramatiq_rate: {fmt(bare.drain_rate)} jobs/s")
        if bare.worker_cpu is not None:
            print(f"cpu_bare_worker: {fmt(bare.worker_cpu / opts.n * 1000, 2)} ms/job")
        print(f"e2e_vs_bare: {fmt(figures.e2e_rate / bare.drain_rate, 2)} ratio")
    sys.stdout.flush()
    return figures.bad == 0 and figures.submit_errors == 0


if __name__ == "__main__":
    sys.exit(main())
