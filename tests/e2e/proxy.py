"""A TCP proxy in front of `conveyor web` that injects faults into chosen connections: drop an
answer, cut a stream short, or answer in the server's place."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

CHUNK = 65536


@dataclass(frozen=True)
class Relay:
    """Pass everything through, both ways."""


@dataclass(frozen=True)
class DropAnswer:
    """Pass the request on, wait for the server's answer to begin, then close both sides
    without passing it back: the server did the work, the client saw the connection drop."""


@dataclass(frozen=True)
class CutWhen:
    """Pass both ways, until what the server sent satisfies `done`; then close both sides."""

    done: Callable[[bytes], bool]


@dataclass(frozen=True)
class Answer:
    """Read the request and answer `raw` (a whole HTTP response) in the server's place."""

    raw: bytes


Fault = Relay | DropAnswer | CutWhen | Answer


def problem_answer(status: int, reason: str, retry_after: int) -> bytes:
    body = (
        f'{{"type": "about:blank", "title": "{reason}", "status": {status}, '
        f'"detail": "injected by the test proxy"}}'
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/problem+json\r\n"
        f"Retry-After: {retry_after}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class FaultyProxy:
    """Listens on 127.0.0.1; each new connection takes the next fault of `faults` (a relay
    once none is left). `requests` holds, per connection, the bytes the client sent."""

    def __init__(self, upstream_port: int, *faults: Fault) -> None:
        self.upstream_port = upstream_port
        self.faults: deque[Fault] = deque(faults)
        self.requests: list[bytearray] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="faulty-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _accept(self) -> None:
        self._listener.settimeout(0.05)  # a closed listener does not wake a blocked accept()
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            client.settimeout(None)
            with self._lock:
                fault = self.faults.popleft() if self.faults else Relay()
                sent = bytearray()
                self.requests.append(sent)
                self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client, fault, sent), daemon=True).start()

    def _serve(self, client: socket.socket, fault: Fault, sent: bytearray) -> None:
        upstream: socket.socket | None = None
        try:
            if isinstance(fault, Answer):
                _read_request(client, sent)
                client.sendall(fault.raw)
                client.shutdown(socket.SHUT_WR)
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
            with self._lock:
                self._sockets.append(upstream)
            threading.Thread(target=_pump, args=(client, upstream, sent), daemon=True).start()
            received = bytearray()
            while True:
                data = upstream.recv(CHUNK)
                if not data:
                    break
                received += data
                if isinstance(fault, DropAnswer):
                    break
                client.sendall(data)
                if isinstance(fault, CutWhen) and fault.done(bytes(received)):
                    break
        except OSError:
            pass
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)


def _pump(source: socket.socket, target: socket.socket, record: bytearray) -> None:
    with contextlib.suppress(OSError):
        while True:
            data = source.recv(CHUNK)
            if not data:
                target.shutdown(socket.SHUT_WR)
                return
            record += data
            target.sendall(data)


def _read_request(sock: socket.socket, record: bytearray) -> None:
    """Read one request (head, and a body of Content-Length) into `record`."""
    sock.settimeout(10)
    while b"\r\n\r\n" not in record:
        data = sock.recv(CHUNK)
        if not data:
            return
        record += data
    head, _, body = bytes(record).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        data = sock.recv(CHUNK)
        if not data:
            return
        body += data
        record += data


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
