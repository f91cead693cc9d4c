"""Notifications through the real processes: `conveyor web` with the notifications pool
sending real SMTP mail, and `conveyor dev` writing email to its outbox folder."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.models import User
from tests.e2e.processes import Api, Processes, environment
from tests.mail import Mailbox, smtp_server
from tests.stack import wait_until

pytestmark = pytest.mark.e2e

WELCOME = {"name": "Ada", "product": "Conveyor"}


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


def _sent(api: Api, notification_id: str) -> list[dict[str, Any]]:
    def settled() -> list[dict[str, Any]] | None:
        status, body = api.request("GET", f"/v1/notifications/{notification_id}")
        assert status == 200, body
        deliveries: list[dict[str, Any]] = body["deliveries"]
        done = all(d["status"] not in ("pending", "sending") for d in deliveries)
        return deliveries if done else None

    deliveries: list[dict[str, Any]] = wait_until(settled, timeout=30, interval=0.1)
    return deliveries


def test_the_notifications_pool_sends_real_mail_and_the_api_reads_it_back(
    procs: Processes,
    platform_env: dict[str, str],
    token: str,
    pg_db: sessionmaker[Session],
    mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    _, api = procs.web(platform_env)
    api = api.with_token(token)
    worker_env = {
        **platform_env,
        "CONVEYOR_SMTP_PORT": str(port),
        "CONVEYOR_PUBLIC_URL": api.base_url,
        "CONVEYOR_MAIL_FROM": "Conveyor <noreply@example.com>",
    }
    procs.worker(worker_env, pool="notifications")
    with pg_db() as session:
        me = session.scalars(select(User.id).where(User.email == "e2e@example.com")).one()
    status, created = api.request(
        "POST",
        "/v1/notifications",
        {"kind": "welcome", "recipients": [{"user_id": str(me)}], "context": WELCOME},
    )
    assert status == 202, created
    (delivery,) = _sent(api, created["id"])
    assert (delivery["status"], delivery["provider"]) == ("sent", "smtp"), delivery
    assert box.count() == 1
    mail = box.messages[0]
    assert mail["To"] == "e2e@example.com" and mail["Subject"] == "Welcome to Conveyor, Ada"
    link = urlsplit(mail["List-Unsubscribe"].strip("<>"))
    assert f"{link.scheme}://{link.netloc}" == api.base_url
    status, answer = Api(api.base_url).request("POST", f"{link.path}?{link.query}")
    assert status == 200 and answer["unsubscribed"], answer

    status, listed = api.request("GET", f"/v1/deliveries?notification_id={created['id']}")
    assert status == 200 and [d["id"] for d in listed["items"]] == [delivery["id"]]


def test_conveyor_dev_writes_email_to_its_outbox_folder(procs: Processes, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    _, api = procs.dev(environment({}), project)
    status, created = api.request(
        "POST",
        "/v1/notifications",
        {
            "kind": "welcome",
            "recipients": [{"address": "ada@example.com", "channel": "email"}],
            "context": WELCOME,
        },
    )
    assert status == 202, created
    (delivery,) = _sent(api, created["id"])
    assert (delivery["status"], delivery["provider"]) == ("sent", "outbox"), delivery
    eml = project / ".conveyor" / "outbox" / f"{delivery['id']}.eml"
    mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert mail["To"] == "ada@example.com"
    assert mail["List-Unsubscribe"].startswith(f"<{api.base_url}/v1/unsubscribe?token=")
