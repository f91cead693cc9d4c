"""The composition root: builds each process's resources once, and closes them in order.

`conveyor web`, every worker pool, `conveyor dev`, the scheduler and the test stack get their
database, broker, publishers, announcements, job loop, HTTP client and the resources that pools
register from a `Container`; nothing else constructs them. Each resource is built on first
use (a worker builds its own after Dramatiq started its process) and closed in stages (see
`Stage`), so nothing is closed while something that uses it still runs.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import dramatiq
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from conveyor.aio import LoopThread
from conveyor.announcements import Announcements, MemoryAnnouncements, RedisAnnouncements
from conveyor.background.batcher import SubmitBatcher
from conveyor.background.stats import StatsReader
from conveyor.background.sweeper import Sweeper
from conveyor.broker import BrokerEnqueuer, build_broker, check_broker, close_broker
from conveyor.db import close_direct, make_engine, make_sessionmaker
from conveyor.db import ping as db_ping
from conveyor.egress import EgressPolicy
from conveyor.errors import UnknownResourceError
from conveyor.feeds import Feeds
from conveyor.httpclient import SharedHttpClient
from conveyor.metrics import JobMetrics
from conveyor.models import JobStatus
from conveyor.models.base import utcnow
from conveyor.models.migrate import SchemaCheck
from conveyor.outbound import HttpClient
from conveyor.registry import JOBS, Registry
from conveyor.services import auth_retention
from conveyor.services.jobs import Enqueuer
from conveyor.services.submissions import Submissions, write_many
from conveyor.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: After the database was unreachable, the sweeper waits this long (the lease, if shorter)
#: before expiring leases: the workers' heartbeats, which renew every second, renew first.
LEASE_HOLD_SECONDS = 10.0
#: Builds a named resource from the container (its settings, job loop, HTTP client...).
#: The object's `close()`, if it has one, is called when the container closes.
ResourceFactory = Callable[["Container"], Any]


class Stage(enum.IntEnum):
    """When a resource closes: what uses others first, what everything uses last."""

    USERS = 0  #: threads and pools' resources that use the rest (sweeper, batcher, executors)
    CLIENTS = 1  #: the enqueuer, announcements, the outbound HTTP client
    LOOP = 2  #: the job loop (its clients close before it)
    FOUNDATIONS = 3  #: the broker and the database engine


class ProcessRole(enum.StrEnum):
    """Which process the container serves; it decides what is shared and how big."""

    WEB = "web"
    WORKER = "worker"
    SCHEDULER = "scheduler"
    DEV = "dev"
    CLI = "cli"


#: Roles that answer HTTP requests: group-committed submissions, the sweeper.
SERVES_HTTP = frozenset({ProcessRole.WEB, ProcessRole.DEV})


class Container:
    """The resources of one process, each built once on first use (from any thread).

    `db`, `broker`, `enqueuer`, `announcements` and `http` may be given instead (tests, the
    embedded mode); the container then uses them and leaves closing them to whoever made them.
    """

    def __init__(
        self,
        settings: Settings,
        role: ProcessRole,
        *,
        registry: Registry = JOBS,
        db: sessionmaker[Session] | None = None,
        broker: dramatiq.Broker | None = None,
        enqueuer: Enqueuer | None = None,
        announcements: Announcements | None = None,
        http: HttpClient | None = None,
        resources: Mapping[str, ResourceFactory] | None = None,
    ) -> None:
        self.settings = settings
        self.role = ProcessRole(role)
        self.registry = registry
        self._given: dict[str, Any] = {
            "db": db,
            "broker": broker,
            "enqueuer": enqueuer,
            "announcements": announcements,
            "http": http,
        }
        self._factories: dict[str, ResourceFactory] = dict(resources or {})
        self._built: dict[str, Any] = {}
        self._lock = threading.Lock()  # guards the dicts; each build holds its own name's lock
        self._building: dict[str, threading.RLock] = {}
        self._closers: list[tuple[Stage, int, str, Callable[[], None]]] = []
        self.closed = False

    # --- building ---------------------------------------------------------------------------

    def _get(
        self,
        name: str,
        build: Callable[[], T],
        close: Callable[[T], Any] | None,
        stage: Stage = Stage.USERS,
    ) -> T:
        given = self._given.get(name)
        if given is not None:
            return given  # type: ignore[no-any-return]
        try:
            return self._built[name]  # type: ignore[no-any-return]
        except KeyError:
            pass
        with self._lock:
            if self.closed:
                raise RuntimeError(f"the container is closed; cannot build {name}")
            lock = self._building.setdefault(name, threading.RLock())
        with lock:  # one build per name; others may build meanwhile (a factory may need them)
            if name not in self._built:
                value = build()
                with self._lock:
                    self._built[name] = value
                    if close is not None:
                        closer = _closer(name, close, value)
                        self._closers.append((stage, len(self._closers), name, closer))
            return self._built[name]  # type: ignore[no-any-return]

    @property
    def engine(self) -> Engine:
        def build() -> Engine:
            pool = self.settings.db_pool_size
            if self.role is ProcessRole.DEV:  # worker threads and the web process share it
                pool = max(pool, self.settings.worker_threads + 4)
            elif self.role is ProcessRole.CLI:
                pool = 1
            return make_engine(self.settings.database_url, pool_size=pool)

        def close(engine: Engine) -> None:
            close_direct(engine)
            engine.dispose()

        return self._get("engine", build, close, Stage.FOUNDATIONS)

    @property
    def db(self) -> sessionmaker[Session]:
        """Database sessions (`with db.begin() as session:` commits)."""
        return self._get("db", lambda: make_sessionmaker(self.engine), None)

    @property
    def broker(self) -> dramatiq.Broker:
        """The Dramatiq broker the settings name (not connected until first used)."""
        settings = self.settings
        return self._get(
            "broker",
            lambda: build_broker(
                settings.broker_url,
                namespace=settings.broker_namespace,
                redis_heartbeat_timeout=settings.redis_heartbeat_timeout_seconds,
                redis_maintenance_interval=settings.redis_maintenance_interval_seconds,
            ),
            close_broker,
            Stage.FOUNDATIONS,
        )

    @property
    def enqueuer(self) -> Enqueuer:
        """Publishes job messages; a few threads in the web process, one elsewhere."""
        threads = self.settings.publish_threads if self.role in SERVES_HTTP else 1
        return self._get(
            "enqueuer",
            lambda: BrokerEnqueuer(
                self.broker, threads=threads, on_failure=self.metrics.publish_failures.inc
            ),
            BrokerEnqueuer.close,
            Stage.CLIENTS,
        )

    @property
    def announcements(self) -> Announcements:
        """Job-status wake-ups: Redis when `redis_url` is set, else within this process."""

        def build() -> Announcements:
            url = self.settings.redis_url
            if url:
                return RedisAnnouncements(url, self.settings.redis_prefix)
            if self.role not in (ProcessRole.DEV, ProcessRole.CLI):  # web processes warn of it
                logger.warning(
                    "no redis_url: clients waiting on jobs are woken only by this process"
                )
            return MemoryAnnouncements()

        return self._get(
            "announcements", build, lambda announcements: announcements.close(), Stage.CLIENTS
        )

    @property
    def db_executor(self) -> ThreadPoolExecutor:
        """Threads that run database calls for the web process (off its event loop)."""
        return self._get(
            "db_executor",
            lambda: ThreadPoolExecutor(self.settings.db_threads, thread_name_prefix="conveyor-db"),
            lambda pool: pool.shutdown(wait=True),
        )

    @property
    def feeds(self) -> Feeds:
        """The web process's watched jobs: each job's changes read once for all its event
        streams and waiting requests (each feed ends with its last subscriber)."""
        return self._get(
            "feeds", lambda: Feeds(self.db, self.db_executor, self.announcements), None
        )

    @property
    def batcher(self) -> SubmitBatcher:
        """Group commit of keyless submissions (the web process)."""
        db = self.db
        return self._get(
            "batcher",
            lambda: SubmitBatcher(lambda batch: write_many(db, batch)),
            SubmitBatcher.close,
        )

    @property
    def sweeper(self) -> Sweeper:
        """The outbox sweeper and lease reconciler thread (started by `start_sweeper`)."""
        settings = self.settings

        def build() -> Sweeper:
            return Sweeper(
                self.db,
                self.enqueuer,
                self.announcements,
                interval=settings.sweep_interval_seconds,
                grace=dt.timedelta(seconds=settings.publish_grace_seconds),
                requeue_after=dt.timedelta(seconds=settings.requeue_after_seconds),
                max_worker_losses=settings.max_worker_losses,
                lease_hold=min(settings.lease_seconds, LEASE_HOLD_SECONDS),
                retention_days=settings.retention_days,
                retention_interval=settings.retention_interval_seconds,
                on_finished=self._count_finished,
                hourly=self._hourly if auth_retention.PURGE_JOB in self.registry else None,
            )

        return self._get("sweeper", build, Sweeper.stop)

    def _hourly(self) -> None:
        auth_retention.queue_purge(self.db, self.submissions, utcnow())

    def _count_finished(self, job_type: str, status: JobStatus) -> None:
        self.metrics.finished.labels(job_type, status.value).inc()

    @property
    def metrics(self) -> JobMetrics:
        """The job metrics this process records (a worker pool's in multiprocess mode, when
        `conveyor.workers.exposition` prepared it before)."""
        return self._get("metrics", JobMetrics, None)

    @property
    def stats(self) -> StatsReader:
        """The reader of the database-derived metrics (started by `start_stats`)."""
        settings = self.settings

        def build() -> StatsReader:
            return StatsReader(
                self.db,
                {job_type.queue for job_type in self.registry},
                interval=settings.metrics_refresh_seconds,
                worker_timeout=settings.worker_timeout_seconds,
                settings=settings,
            )

        return self._get("stats", build, StatsReader.stop)

    def start_stats(self) -> StatsReader:
        stats = self.stats
        if not stats.is_alive():
            stats.start()
        return stats

    def start_sweeper(self) -> Sweeper:
        sweeper = self.sweeper
        if not sweeper.is_alive():
            sweeper.start()
        return sweeper

    @property
    def submissions(self) -> Submissions:
        """The one submission path, wired for this process."""

        def build() -> Submissions:
            serves_http = self.role in SERVES_HTTP
            return Submissions(
                self.db,
                self.registry,
                self.enqueuer,
                max_delay=dt.timedelta(seconds=self.settings.max_delay_seconds),
                writer=self.batcher if serves_http else None,
                executor=self.db_executor if serves_http else None,
                on_scheduled=self.sweeper.wake_at if serves_http else None,
            )

        return self._get("submissions", build, None)

    @property
    def loop(self) -> LoopThread:
        """The job event loop: `async def` jobs and their shared clients run on it."""
        return self._get("loop", LoopThread, LoopThread.close, Stage.LOOP)

    @property
    def http(self) -> HttpClient:
        """The shared outbound HTTP client (`ctx.http`)."""
        settings = self.settings

        def build() -> SharedHttpClient:
            return SharedHttpClient(
                self.loop,
                timeout_seconds=settings.http_timeout_seconds,
                connect_timeout_seconds=settings.http_connect_timeout_seconds,
                max_response_bytes=settings.http_max_response_bytes,
                egress=EgressPolicy.of_setting(settings.outbound_allow_hosts),
            )

        return self._get("http", build, SharedHttpClient.close, Stage.CLIENTS)

    def readiness_checks(self) -> dict[str, Callable[[], None]]:
        """What `/readyz` asks: each check raises unless its dependency answers."""
        schema = self._get("schema_check", lambda: SchemaCheck(self.db), None)
        return {
            "database": lambda: db_ping(self.db),
            "schema": schema,
            "broker": lambda: check_broker(self.broker, self.settings.broker_url),
            "redis": lambda: self.announcements.ping(),
        }

    def is_built(self, name: str) -> bool:
        """Whether the resource `name` exists already (given, or built)."""
        return self._given.get(name) is not None or name in self._built

    # --- named resources of the pools -------------------------------------------------------

    def register(self, name: str, factory: ResourceFactory) -> None:
        """Declare a named resource (built on first `resource(name)`)."""
        with self._lock:
            if name in self._factories:
                raise ValueError(f"resource {name!r} is already registered")
            self._factories[name] = factory

    def resource(self, name: str) -> Any:
        """The named resource, built on first use; UnknownResourceError if none is registered."""
        factory = self._factories.get(name)
        if factory is None:
            known = ", ".join(sorted(self._factories)) or "none"
            raise UnknownResourceError(
                f"no resource {name!r} is registered in this process (registered: {known})"
            )

        def close(value: Any) -> None:
            if callable(getattr(value, "close", None)):
                value.close()

        return self._get(f"resource:{name}", lambda: factory(self), close)

    # --- closing ----------------------------------------------------------------------------

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close what was built: first what uses the others (threads, pools' resources), then
        the clients, the job loop, and the broker and database last; within a stage, newest
        first. A failure is logged and the rest still close."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            closers = sorted(self._closers, key=lambda c: (c[0], -c[1]))
            self._closers = []
            self._built.clear()  # what still runs gets an error, not a half-closed resource
        for _stage, _order, _name, closer in closers:
            closer()


def _closer(name: str, close: Callable[[T], Any], value: T) -> Callable[[], None]:
    def run() -> None:
        try:
            close(value)
        except Exception:
            logger.warning("could not close %s cleanly", name, exc_info=True)

    return run
