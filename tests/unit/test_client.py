"""The client's core without a server: errors from problem documents, retry decisions, event
stream lines, lenient reading of jobs, the requests it builds, and a standalone import."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import subprocess
import sys

import pytest

from conveyor.client import (
    ApiError,
    ConflictError,
    InvalidRequestError,
    Job,
    JobStatus,
    ProtocolError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    protocol,
)
from conveyor.client.errors import api_error, parse_retry_after
from conveyor.client.protocol import EventStream, Request, Response, RetryPolicy

JOB = {
    "id": "01a2-job",
    "type": "system.echo",
    "queue": "system",
    "status": "succeeded",
    "payload": {"a": 1},
    "result": {"a": 1},
    "error": None,
    "attempts": 1,
    "max_retries": 0,
    "worker_losses": 0,
    "progress": 1.0,
    "owner_id": "01a2-user",
    "parent_id": None,
    "idempotency_key": "k",
    "cancel_requested": False,
    "created_at": "2026-11-24T12:23:19.699015Z",
    "updated_at": "2026-11-24T12:23:20Z",
    "run_at": None,
    "started_at": "2026-11-24T12:23:19.8Z",
    "finished_at": "2026-11-24T12:23:20Z",
    "next_attempt_at": None,
    "url": "/v1/jobs/01a2-job",
}


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    code = (
        "import sys, conveyor.client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('conveyor', 'sqlalchemy', 'pydantic', 'dramatiq', 'redis', 'psycopg')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = json.loads(out.replace("'", '"'))
    assert all(m == "conveyor" or m.startswith("conveyor.client") for m in loaded), loaded


def test_a_problem_document_becomes_the_error_of_its_status() -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Unprocessable content",
            "status": 422,
            "detail": "invalid payload for system.sleep",
            "errors": [
                {"field": "payload.seconds", "message": "too small"},
                {"field": "payload.x", "message": "extra"},
            ],
        }
    ).encode()
    error = api_error(422, {"x-request-id": "abc"}, body)
    assert isinstance(error, InvalidRequestError)
    assert (error.status, error.title, error.request_id) == (422, "Unprocessable content", "abc")
    assert error.fields == {"payload.seconds": "too small", "payload.x": "extra"}
    assert str(error) == (
        "422 Unprocessable content: invalid payload for system.sleep "
        "(payload.seconds: too small; payload.x: extra)"
    )

    limited = api_error(429, {"retry-after": "5"}, b'{"title": "Too many requests"}')
    assert isinstance(limited, RateLimitedError) and limited.retry_after == 5.0
    assert limited.detail == "Too many requests"
    assert isinstance(api_error(503, {}, b""), ServiceUnavailableError)
    assert isinstance(api_error(409, {}, b"{}"), ConflictError)


def test_an_answer_that_is_no_problem_document_still_gives_an_error() -> None:
    error = api_error(502, {}, b"<html>Bad Gateway</html>", "Bad Gateway")
    assert isinstance(error, ServerError)
    assert (error.title, error.detail) == ("Bad Gateway", "<html>Bad Gateway</html>")
    teapot = api_error(418, {}, b"")
    assert type(teapot) is ApiError and teapot.status == 418


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    seconds = parse_retry_after(email.utils.format_datetime(later, usegmt=True))
    assert seconds is not None and 100 < seconds <= 120
    past = email.utils.format_datetime(dt.datetime(2000, 1, 1, tzinfo=dt.UTC), usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_the_retry_policy_backs_off_within_its_bounds() -> None:
    policy = RetryPolicy(retries=3, backoff=1.0, max_backoff=3.0)
    for attempt, ceiling in ((0, 1.0), (1, 2.0), (2, 3.0)):
        delay = policy.delay(attempt)
        assert delay is not None and ceiling / 2 <= delay <= ceiling
    assert policy.delay(3) is None  # retries spent
    assert policy.delay(0, retry_after=2.5) == 2.5  # the server's wish, when longer
    assert policy.delay(0, retry_after=60) is None  # longer than it would wait: raise


def test_which_answers_are_worth_sending_again() -> None:
    plain = Request("GET", "/v1/jobs/x")
    submission = Request("POST", "/v1/jobs", retry_conflict=True)

    def answer(status: int, **headers: str) -> Response:
        return Response(status, headers, b"")

    assert protocol.should_retry(plain, answer(503, **{"retry-after": "5"})) == (True, 5.0)
    assert protocol.should_retry(plain, answer(502))[0]
    assert not protocol.should_retry(plain, answer(500))[0]
    assert not protocol.should_retry(plain, answer(429))[0]  # no Retry-After: not told when
    assert protocol.should_retry(plain, answer(429, **{"retry-after": "1"}))[0]
    assert not protocol.should_retry(plain, answer(409))[0]
    assert protocol.should_retry(submission, answer(409))[0]  # the same key in flight
    assert not protocol.should_retry(submission, answer(422))[0]


def test_the_event_stream_is_parsed_resumed_and_ended() -> None:
    stream = EventStream("job-1", last_event_id=None)
    assert "Last-Event-ID" not in stream.request().headers

    def event(event_id: int, kind: str, status: str) -> list[bytes]:
        data = json.dumps({"job_id": "job-1", "kind": kind, "status": status, "attempt": 1})
        text = f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n"
        return [line.encode() for line in text.splitlines(keepends=True)]

    seen = []
    for line in [b": keep-alive\n", b"\n", *event(4, "status", "running")]:
        parsed = stream.feed(line)
        if parsed is not None:
            seen.append(parsed)
    assert [(e.id, e.kind, e.status) for e in seen] == [(4, "status", JobStatus.RUNNING)]
    assert stream.last_id == 4 and not stream.done
    assert stream.request().headers["Last-Event-ID"] == "4"

    again = [stream.feed(line) for line in event(4, "status", "running")]
    assert again == [None] * 4  # already given before the reconnect
    progress = [stream.feed(line) for line in event(5, "progress", "running")][-1]
    assert progress is not None and not progress.final
    final = [stream.feed(line) for line in event(6, "status", "succeeded")][-1]
    assert final is not None and final.final and stream.done

    with pytest.raises(ProtocolError):
        for line in (b"id: 7\n", b"data: {not json\n", b"\n"):
            stream.feed(line)


def test_a_job_is_read_leniently_from_a_newer_server() -> None:
    job = Job.from_json({**JOB, "status": "paused", "shiny": True})
    assert job.status == "paused" and not job.finished
    assert job.raw["shiny"] is True
    assert job.created_at == dt.datetime(2026, 11, 24, 12, 23, 19, 699015, tzinfo=dt.UTC)
    error = {"type": "ValueError", "message": "no", "traceback": "T"}
    failed = Job.from_json({**JOB, "status": "failed", "error": error})
    assert failed.finished and failed.error is not None
    assert (failed.error.type, failed.error.message, failed.error.traceback) == (
        "ValueError",
        "no",
        "T",
    )
    with pytest.raises(ProtocolError):
        Job.from_json({"status": "queued"})
    with pytest.raises(ProtocolError):
        Job.from_json({**JOB, "created_at": "yesterday"})


def test_submissions_carry_their_key_wait_and_timing() -> None:
    at = dt.datetime(2030, 1, 1, 9, tzinfo=dt.UTC)
    request = protocol.submit(
        "system.echo", {"a": 1}, idempotency_key="k", wait=5, delay_seconds=None, run_at=at
    )
    assert request.headers["Idempotency-Key"] == "k"
    assert request.headers["Prefer"] == "wait=5" and request.hold == 5
    assert request.body is not None
    assert json.loads(request.body) == {
        "type": "system.echo",
        "payload": {"a": 1},
        "run_at": "2030-01-01T09:00:00+00:00",
    }
    with pytest.raises(ValueError, match="timezone-aware"):
        protocol.submit(
            "t", {}, idempotency_key="k", wait=None, delay_seconds=None,
            run_at=dt.datetime(2030, 1, 1),
        )  # fmt: skip
    assert protocol.new_idempotency_key() != protocol.new_idempotency_key()


def test_list_queries_and_base_urls() -> None:
    request = protocol.list_page(
        status=["queued", "running"], type="system.echo", parent="p-1", include=None, limit=2,
        cursor="c",
    )  # fmt: skip
    assert request.target("/conveyor") == (
        "/conveyor/v1/jobs?status=queued%2Crunning&type=system.echo&parent=p-1&limit=2&cursor=c"
    )
    assert protocol.split_base_url("https://api.example.com/conveyor/") == (
        "https",
        "api.example.com",
        443,
        "/conveyor",
    )
    assert protocol.origin("http://127.0.0.1:8000/x") == "http://127.0.0.1:8000"
    with pytest.raises(ValueError, match="http"):
        protocol.split_base_url("ftp://example.com")
    assert protocol.job_path("a/b") == "/v1/jobs/a%2Fb"


DELIVERY = {
    "id": "d-1",
    "notification_id": "n-1",
    "user_id": None,
    "channel": "email",
    "address": "ada@example.com",
    "status": "sent",
    "attempts": 1,
    "last_error": None,
    "provider": "smtp",
    "provider_message_id": "<d-1@example.com>",
    "job_id": "j-1",
    "digest_id": None,
    "created_at": "2026-11-24T12:23:19Z",
    "updated_at": "2026-11-24T12:23:20Z",
    "sent_at": "2026-11-24T12:23:20Z",
    "a_newer_field": 1,
}


def test_notification_requests_and_answers() -> None:
    request = protocol.notify(
        "welcome",
        ["u-1", {"address": "ada@example.com", "channel": "email"}],
        context={"name": "Ada"},
        channels=None,
        idempotency_key="k",
    )
    assert (request.method, request.path, request.headers["Idempotency-Key"]) == (
        "POST",
        "/v1/notifications",
        "k",
    )
    assert request.body is not None and json.loads(request.body) == {
        "kind": "welcome",
        "recipients": [{"user_id": "u-1"}, {"address": "ada@example.com", "channel": "email"}],
        "context": {"name": "Ada"},
    }
    by_channel = protocol.notify(
        "welcome", ["u-1"], context=None, channels="email", idempotency_key="k"
    )
    assert by_channel.body is not None and json.loads(by_channel.body)["channels"] == ["email"]
    with pytest.raises(TypeError, match="list"):
        protocol.notify("welcome", "u-1", context=None, channels=None, idempotency_key="k")
    assert protocol.get_notification("n/1").path == "/v1/notifications/n%2F1"
    listing = protocol.deliveries_page(
        notification="n-1", status=["failed"], channel="sms", limit=5, cursor="c"
    )
    assert listing.target("") == (
        "/v1/deliveries?notification_id=n-1&status=failed&channel=sms&limit=5&cursor=c"
    )

    answer = {"id": "n-1", "kind": "welcome", "context": {}, "deliveries": [DELIVERY]}
    notification = protocol.read_notification(Response(202, {}, json.dumps(answer).encode()))
    (delivery,) = notification.deliveries
    assert delivery.status == "sent" and delivery.raw["a_newer_field"] == 1
    assert notification.finished and delivery.sent_at is not None
    page = protocol.read_deliveries(
        Response(200, {"link": '<http://x/v1/deliveries?cursor=c>; rel="next"'},
                 json.dumps({"items": [DELIVERY], "next_cursor": "c"}).encode())
    )  # fmt: skip
    assert page.next_cursor == "c" and page.next_url == "http://x/v1/deliveries?cursor=c"
    with pytest.raises(ProtocolError):
        protocol.read_notification(Response(200, {}, b'{"kind": "welcome"}'))
