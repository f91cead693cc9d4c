"""Checks that PostgreSQL, Redis and RabbitMQ answer on 127.0.0.1; says how to start them."""

from __future__ import annotations

import os
import socket
import sys

SERVICES = {
    "PostgreSQL": (
        os.environ.get("CONVEYOR_TEST_PG_HOST", "127.0.0.1"),
        5432,
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ),
    "Redis": (
        "127.0.0.1",
        6379,
        'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
    ),
    "RabbitMQ": ("127.0.0.1", 5672, "rabbitmq-server -detached && rabbitmqctl await_startup"),
}


def unreachable() -> list[str]:
    """A line per service that does not accept connections, with the command to start it."""
    problems = []
    for name, (host, port, start) in SERVICES.items():
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            problems.append(f"{name} is not reachable on {host}:{port} ({exc}); start it: {start}")
    return problems


if __name__ == "__main__":
    problems = unreachable()
    for line in problems:
        print(line, file=sys.stderr)
    sys.exit(1 if problems else 0)
