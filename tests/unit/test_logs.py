"""Outages are logged once when they start and once when they end; the broker clients' own
lines about each failed reconnect are kept out of the log unless it is at DEBUG. JSON lines
carry the fields a line passes in `extra`, and the id of the job a line is about."""

from __future__ import annotations

import datetime as dt
import json
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import logs
from conveyor.logs import Outage, configure_logging

CONSUMER = "dramatiq.worker.ConsumerThread(system)"


@pytest.fixture(autouse=True)
def own_outages(monkeypatch: pytest.MonkeyPatch) -> None:
    """No outage of another test (still down, not yet collected) is seen by the filter."""
    monkeypatch.setattr(logs, "_OUTAGES", weakref.WeakSet())


@pytest.fixture
def configured() -> Iterator[None]:
    """Leave the root logger and pika's as they were (configure_logging replaces them)."""
    root, pika = logging.getLogger(), logging.getLogger("pika")
    handlers, level, pika_level = root.handlers[:], root.level, pika.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        pika.setLevel(pika_level)


def _reconnect_attempt(error: str = "CONNECTION_FORCED") -> None:
    """What Dramatiq's consumer thread logs on each failed connection."""
    log = logging.getLogger(CONSUMER)
    log.critical("Consumer encountered a connection error: %s", error)
    log.info("Restarting consumer in %0.2f seconds.", 3.0)


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    outage = Outage("broker", logging.getLogger("test.outage"))
    outage.succeeded()
    for _ in range(5):
        outage.failed(ConnectionRefusedError(111, "Connection refused"))
    assert outage.down
    for _ in range(3):
        outage.succeeded()
    outage.failed(ConnectionRefusedError(111, "Connection refused"))
    outage.succeeded()

    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "INFO", "WARNING", "INFO"]
    assert lines[0][1].startswith("broker unreachable: ConnectionRefusedError(111,")
    assert "(5 failed attempts)" in lines[1][1]
    assert "(1 failed attempts)" in lines[3][1]
    assert (outage.attempts, outage.outages, outage.down) == (6, 2, False)


def test_pika_lines_about_a_failed_connection_show_only_at_debug(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    pika_log = logging.getLogger("pika.adapters.blocking_connection")
    configure_logging("INFO")
    pika_log.error("Connection workflow failed: AMQPConnectionWorkflowFailed")
    pika_log.exception("Error in _create_connection().")
    assert capsys.readouterr().err == ""
    configure_logging("DEBUG")
    pika_log.error("Connection workflow failed: AMQPConnectionWorkflowFailed")
    assert "Connection workflow failed" in capsys.readouterr().err


def test_dramatiq_reconnect_lines_are_dropped_while_conveyor_reports_the_outage(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")
    outage = Outage("broker", logging.getLogger("conveyor.broker"))
    outage.failed(ConnectionError("CONNECTION_FORCED"))
    for _ in range(4):
        _reconnect_attempt()
    outage.succeeded()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert "WARNING conveyor.broker: broker unreachable: ConnectionError(" in err[0]
    assert "INFO    conveyor.broker: broker reachable again after" in err[1]


def test_without_a_reported_outage_the_first_reconnect_line_passes_as_a_warning(
    configured: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    configure_logging("INFO")
    for _ in range(5):  # one outage: Dramatiq retries every 3 s
        _reconnect_attempt()
        now[0] += 3.0
    now[0] += logs.REPEAT_SECONDS  # quiet, then a second outage
    _reconnect_attempt("Connection refused")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert f"WARNING {CONSUMER}: Consumer encountered a connection error: CONNECTION_" in err[0]
    assert "Consumer encountered a connection error: Connection refused" in err[1]


def test_at_debug_the_repeated_reconnect_lines_are_kept_as_debug_lines(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("DEBUG")
    outage = Outage("broker", logging.getLogger("conveyor.broker"))
    outage.failed(ConnectionError("down"))
    _reconnect_attempt()
    err = capsys.readouterr().err
    assert f"DEBUG   {CONSUMER}: Consumer encountered a connection error" in err
    assert "CRITICAL" not in err


# --- JSON lines and their fields -------------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_lines_carry_the_fields_a_line_passes_in_extra(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")
    log = logging.getLogger("test.fields")
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    log.info(
        "job %s ended",
        "j1",
        extra={"job_type": "system.echo", "attempt": 2, "duration_ms": 1.5, "at": when},
    )
    (line,) = _json_lines(capsys.readouterr().err)
    assert line["message"] == "job j1 ended"
    assert (line["job_type"], line["attempt"], line["duration_ms"]) == ("system.echo", 2, 1.5)
    assert line["at"] == str(when)  # not JSON itself: as text
    assert "args" not in line and "msg" not in line and "levelno" not in line


def test_a_line_about_one_job_names_it_over_the_context(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")
    log = logging.getLogger("test.fields")
    token = logs.job_id.set("running-job")
    try:
        log.warning("about the running job")
        log.warning("about another job", extra=logs.job_fields("other-job"))
    finally:
        logs.job_id.reset(token)
    log.warning("about no job")
    lines = _json_lines(capsys.readouterr().err)
    assert [line.get("job_id") for line in lines] == ["running-job", "other-job", None]


def test_a_json_line_carries_its_traceback(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("test.fields").exception("failed")
    (line,) = _json_lines(capsys.readouterr().err)
    assert line["level"] == "error"
    assert line["exc_info"].rstrip().endswith("ValueError: broken")


def test_a_text_line_shows_the_job_it_is_about(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "text")
    logging.getLogger("test.fields").info("done", extra=logs.job_fields("j9"))
    assert capsys.readouterr().err.rstrip().endswith("test.fields: done [job_id=j9]")
