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

The platform and its faults are in bench/chaos_platform.py, the clients in
bench/chaos_clients.py, the verdict in bench/chaos_tally.py.

Standard output: a `#` header with the configuration, then `<broker>_<name>: value unit` lines
per broker. Progress and diagnostics go to standard error. The exit status is 1 when a broker
lost, wrongly failed, duplicated or finished late a job; 2 when the run itself failed.

    .venv/bin/python bench/chaos.py [--broker rabbitmq|redis|both] [--duration 90] [--rate 5]
        [--clients 4] [--bound 30] [--drain 120] [--seed 1] [--set CONVEYOR_NAME=value]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import random
import shutil
import signal
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/chaos.py`
    sys.path.insert(0, str(ROOT))

from bench.chaos_clients import (  # noqa: E402
    DELAY_SECONDS,
    ECHO,
    KEYED,
    RETRY_FOR,
    SLEEP,
    SLEEP_SECONDS,
    SLEEP_STEPS,
    Clients,
)
from bench.chaos_platform import FAST, START_TIMEOUT, WEBS, WORKERS, Counts, Platform  # noqa: E402
from bench.chaos_tally import PENDING, JobRow, Tally, tally  # noqa: E402
from bench.harness import (  # noqa: E402
    BenchError,
    fmt,
    interrupt_on_sigterm,
    log,
    percentile,
    source_version,
    wait_for,
)

BROKERS = ("rabbitmq", "redis")
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
    clients = Clients(platform, clients=opts.clients, rate=opts.rate, seed=opts.seed)
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
        platform = Platform(
            broker,
            directory,
            stack,
            threads=opts.threads,
            settings=opts.settings,
            fault_gap=opts.fault_gap,
        )
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
        "--bound", type=float, default=30.0, help="seconds from due to finished (default 30)"
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
