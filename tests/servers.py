"""Private PostgreSQL, Redis and RabbitMQ servers for fault tests and `bench/chaos.py`.

A test that restarts or kills a server must not touch the shared ones (other tests use them):
each class here starts its own server on a free port in a directory of its own, restarts,
stops or kills it by its own pid, and removes everything when closed.

    with PrivatePostgres() as pg:
        url = pg.url("conveyor")          # a database made for the test
        pg.restart(mode="fast")           # what `pg_ctl restart -m fast` does to clients

PostgreSQL runs as the `postgres` user when started by root (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self
from urllib.parse import quote

import redis


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout} s")
        time.sleep(0.05)


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    done = subprocess.run(
        list(argv), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def _read_pid(path: Path) -> int | None:
    """The pid on the first line of `path` (a server's pid file), if it is there."""
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pid(pid: int, timeout: float = 20) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait(lambda: not _pid_alive(pid), timeout, f"pid {pid} still alive")


class PrivatePostgres:
    """A PostgreSQL cluster of its own: trust auth, user `postgres`, 127.0.0.1:`port`."""

    def __init__(self) -> None:
        # Its own temporary directory: under root, the server runs as `postgres`, which must
        # reach it (a test's tmp_path is private to root).
        self.directory = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    def _ctl(self, *args: str, timeout: float = 60) -> str:
        argv = ["pg_ctl", "-D", str(self.data), *args]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return _run(argv, timeout=timeout)

    def start(self) -> Self:
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        if not self.data.exists():
            initdb = ["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N"]
            if self._as_postgres:
                initdb = ["runuser", "-u", "postgres", "--", *initdb]
            _run(initdb)
        self._start()
        return self

    def _options(self) -> str:
        # fsync off: what a test's server wrote survives its processes' crash (the kernel
        # keeps it), not the machine's, which no test simulates. Commits stay synchronous,
        # or an immediate restart would lose transactions already answered.
        return (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off "
            "-c max_connections=200"
        )

    def _start(self) -> None:
        self._ctl("-o", self._options(), "-l", str(self.directory / "pg.log"), "start", "-w")

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL of `database`, made if missing (psycopg 3 driver)."""
        if database != "postgres":
            import psycopg

            with psycopg.connect(self.dsn(), autocommit=True) as connection:
                exists = connection.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
                ).fetchone()
                if exists is None:
                    connection.execute(f'CREATE DATABASE "{database}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{quote(database)}"

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart -m fast|immediate`: every client connection is cut."""
        self._ctl(
            "-o", self._options(), "-l", str(self.directory / "pg.log"), "restart", "-m", mode, "-w"
        )

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-m", mode, "-w")

    def resume(self) -> None:
        """Start it again after `stop` or `kill`."""
        self._start()

    @property
    def pid(self) -> int | None:
        return _read_pid(self.data / "postmaster.pid")

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (its backends end with it)."""
        pid = self.pid
        if pid is not None:
            _kill_pid(pid)
            _wait(lambda: not _listening(self.port), 20, "postgres still listening")

    def close(self) -> None:
        if self.pid is not None and _pid_alive(self.pid):
            with contextlib.suppress(Exception):
                self.stop("immediate")
            pid = self.pid
            if pid is not None and _pid_alive(pid):
                _kill_pid(pid)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrivateRedis:
    """A Redis server of its own on 127.0.0.1:`port`, with an append-only file.

    `appendfsync` is Redis's: `always` (the default here: a SIGKILL loses no acknowledged
    write, which some tests rely on) or `everysec` (Redis's default and docker-compose's:
    a SIGKILL may lose the last second of writes).
    """

    def __init__(self, directory: Path, *, appendfsync: str = "always") -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = free_port()
        self.pidfile = directory / "redis.pid"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        _run(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--daemonize", "yes", "--dir", str(self.directory), "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--pidfile", str(self.pidfile),
                "--logfile", str(self.directory / "redis.log"), "--save", "",
            ]
        )  # fmt: skip
        _wait(lambda: self.pid is not None and self._serving(), 20, "redis not up")
        return self

    def _serving(self) -> bool:
        """Listening, and done loading its data (until then it answers LOADING)."""
        if not _listening(self.port):
            return False
        client = redis.Redis(port=self.port, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    @property
    def pid(self) -> int | None:
        return _read_pid(self.pidfile)

    def stop(self) -> None:
        """A graceful shutdown (the append-only file keeps every write)."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        _wait(lambda: not _pid_alive(pid), 20, "redis did not stop")
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()

    def kill(self) -> None:
        pid = self.pid
        if pid is not None:
            _kill_pid(pid)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()

    def restart(self, *, hard: bool = False) -> None:
        self.kill() if hard else self.stop()
        self.start()

    def resume(self) -> None:
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (`name@localhost`) on 127.0.0.1:`port`; guest/guest.

    Its boot takes 10-25 s, so share one per test module where tests allow it.
    """

    def __init__(self) -> None:
        # Its own temporary directory: Debian's rabbitmq-server runs the node as `rabbitmq`.
        directory = Path(tempfile.mkdtemp(prefix="conveyor-rabbitmq-"))
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"conveyor-{self.port}@localhost"
        self._env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
        }

    def url(self, vhost: str = "/") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def ctl(self, *args: str, timeout: float = 120) -> str:
        return _run(["rabbitmqctl", "-q", "-n", self.node, *args], env=self._env, timeout=timeout)

    def start(self) -> Self:
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq.conf").write_text("loopback_users = none\n")
        if os.geteuid() == 0:
            user = pwd.getpwnam("rabbitmq")
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._boot()
        return self

    def _boot(self) -> None:
        _run(["rabbitmq-server", "-detached"], env=self._env)
        # `wait` follows the pid file until the node has booted (await_startup fails while the
        # node has not registered its name yet).
        self.ctl("wait", str(self.directory / "rabbitmq.pid"), "--timeout", "180", timeout=200)
        _wait(lambda: _listening(self.port), 60, "rabbitmq not listening")

    def add_vhost(self, vhost: str) -> str:
        """Make `vhost` (guest may use it); its URL."""
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return self.url(vhost)

    def stop_app(self) -> None:
        """Stop the broker application (the node stays): every connection is cut."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", timeout=120)
        _wait(lambda: _listening(self.port), 60, "rabbitmq not listening")

    def restart(self) -> None:
        self.stop_app()
        self.start_app()

    @property
    def pid(self) -> int | None:
        return _read_pid(self.directory / "rabbitmq.pid")

    def kill(self) -> None:
        """SIGKILL the node, as a crash would."""
        pid = self.pid
        if pid is not None:
            _kill_pid(pid)
        _wait(lambda: not _listening(self.port), 20, "rabbitmq still listening")

    def resume(self) -> None:
        """Boot the node again after `kill`."""
        self._boot()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ctl("stop", timeout=60)
        pid = self.pid
        if pid is not None and _pid_alive(pid):
            _kill_pid(pid)
        # epmd may keep the node's name a moment; the directory is ours alone.
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
