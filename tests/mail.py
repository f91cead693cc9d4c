"""An SMTP server in the test process (aiosmtpd) that keeps the mail it receives."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


class Mailbox:
    """An aiosmtpd handler that keeps what it receives; refuses recipients named `bounce` for
    good (550) and those named `greylist` for now (450), and answers 451 to the first
    `temporary_failures` messages."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []
        #: When each message arrived (time.monotonic()).
        self.times: list[float] = []
        self.lock = threading.Lock()
        self.temporary_failures = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("bounce@"):
            return "550 5.1.1 no such mailbox"
        if address.startswith("greylist@"):
            return "450 4.2.0 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.temporary_failures > 0:
                self.temporary_failures -= 1
                return "451 4.3.0 try again later"
            parsed = message_from_bytes(envelope.content, policy=policy.default)
            self.messages.append(parsed)  # type: ignore[arg-type]
            self.raw.append(envelope.content)
            self.times.append(time.monotonic())
        return "250 OK"

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


#: Tries at a free port for the server before giving up.
BIND_ATTEMPTS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """A running SMTP server on 127.0.0.1: its mailbox and port."""
    handler = Mailbox()
    for attempt in range(BIND_ATTEMPTS):
        # A free port may be taken by another process between the look and the bind.
        port = _free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        try:
            controller.start()
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == BIND_ATTEMPTS - 1:
                raise
    try:
        yield handler, port
    finally:
        controller.stop()
