"""The one submission path on SQLite: validation of a submission, delayed jobs, publishing."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest
from pydantic import Field
from sqlalchemy.orm import Session, sessionmaker

from conveyor.errors import BadRequestError, ConveyorError, InvalidRequestError
from conveyor.models import Job, JobStatus, User
from conveyor.models.base import utcnow
from conveyor.registry import Payload, Registry, job
from conveyor.services import submissions
from conveyor.services.jobs import JobMessage
from conveyor.services.submissions import NewJob, Submissions, Submitted
from tests.unit.support import RecordingEnqueuer

REGISTRY = Registry()
MAX_DELAY = dt.timedelta(hours=1)


class Resize(Payload):
    width: int = Field(ge=1, le=10_000)
    ratio: float = 1.0
    label: str = ""


class Nothing(Payload):
    pass


@job(queue="images", name="tests.resize", max_retries=5, registry=REGISTRY)
def resize(payload: Resize) -> None:
    raise NotImplementedError  # only submitted here, never run


@job(queue="images", name="tests.nothing", max_retries=0, registry=REGISTRY)
def nothing(payload: Nothing) -> None:
    raise NotImplementedError


@pytest.fixture
def scheduled_at() -> list[dt.datetime]:
    """The due times `on_scheduled` was called with."""
    return []


@pytest.fixture
def subs(
    db: sessionmaker[Session], enqueuer: RecordingEnqueuer, scheduled_at: list[dt.datetime]
) -> Submissions:
    return Submissions(
        db, REGISTRY, enqueuer, max_delay=MAX_DELAY, on_scheduled=scheduled_at.append
    )


def build(subs: Submissions, owner: User, **options: Any) -> NewJob:
    options.setdefault("payload", {"width": 100})
    job_type = options.pop("job_type", "tests.resize")
    payload = options.pop("payload")
    return subs.build(job_type, payload, owner_id=owner.id, **options)


def fields_of(error: ConveyorError) -> list[str]:
    return [item["field"] for item in error.errors]


def close_to(when: dt.datetime | None, expected: dt.datetime, within: float = 1.0) -> bool:
    return when is not None and abs((when - expected).total_seconds()) <= within


# --- build: what is refused -----------------------------------------------------------------


def test_an_unknown_job_type_is_a_422_naming_type(subs: Submissions, member: User) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build(subs, member, job_type="tests.nope")
    assert caught.value.status == 422
    assert fields_of(caught.value) == ["type"]
    assert "tests.resize" in caught.value.errors[0]["message"]  # lists the known types


def test_a_function_not_declared_as_a_job_is_a_type_error(subs: Submissions, member: User) -> None:
    def plain(payload: Resize) -> None:
        pass

    with pytest.raises(TypeError):
        build(subs, member, job_type=plain)


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"width": 0}, ["payload.width"]),
        ({"width": "wide"}, ["payload.width"]),
        ({}, ["payload.width"]),
        ({"width": 10, "height": 5}, ["payload.height"]),
        ({"width": 0, "ratio": "x"}, ["payload.width", "payload.ratio"]),
    ],
    ids=["too-small", "wrong-type", "missing", "unknown-field", "two-fields"],
)
def test_a_bad_payload_is_a_422_naming_each_bad_field(
    subs: Submissions, member: User, payload: dict[str, Any], fields: list[str]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build(subs, member, payload=payload)
    assert caught.value.status == 422
    assert sorted(fields_of(caught.value)) == sorted(fields)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_payload_with_nan_or_infinity_is_a_422(
    subs: Submissions, member: User, value: float
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build(subs, member, payload={"width": 1, "ratio": value})
    assert caught.value.status == 422
    assert fields_of(caught.value) == ["payload.ratio"]  # the model's float field says so


def test_a_payload_with_a_nul_character_is_a_422(subs: Submissions, member: User) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build(subs, member, payload={"width": 1, "label": "a\x00b"})
    assert fields_of(caught.value) == ["payload"]


def test_a_payload_of_another_jobs_model_is_a_422(subs: Submissions, member: User) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build(subs, member, payload=Nothing())
    assert fields_of(caught.value) == ["payload"]


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "caf\u00e9", "line\nbreak", "tab\there", "\x7f"],
    ids=["empty", "too-long", "not-ascii", "newline", "tab", "delete"],
)
def test_a_bad_idempotency_key_is_a_400(subs: Submissions, member: User, key: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        build(subs, member, idempotency_key=key)
    assert caught.value.status == 400
    assert fields_of(caught.value) == ["Idempotency-Key"]


def test_the_longest_printable_idempotency_key_is_accepted(subs: Submissions, member: User) -> None:
    key = "k ~" + "x" * 252
    assert build(subs, member, idempotency_key=key).idempotency_key == key


def test_run_at_without_an_offset_is_a_422(subs: Submissions, member: User) -> None:
    naive = dt.datetime.now() + dt.timedelta(minutes=5)  # naive on purpose
    with pytest.raises(InvalidRequestError) as caught:
        build(subs, member, run_at=naive)
    assert fields_of(caught.value) == ["run_at"]


def test_run_at_and_delay_together_are_a_422(subs: Submissions, member: User) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build(subs, member, run_at=utcnow() + dt.timedelta(minutes=1), delay=60)
    assert caught.value.status == 422
    assert fields_of(caught.value) == ["delay_seconds"]


@pytest.mark.parametrize(
    "delay",
    [-1, -0.001, 3600.5, float("nan"), float("inf"), dt.timedelta(hours=2), dt.timedelta(-1)],
    ids=["negative", "slightly-negative", "too-large", "nan", "inf", "too-long", "negative-td"],
)
def test_a_negative_too_large_or_nan_delay_is_a_422(
    subs: Submissions, member: User, delay: float | dt.timedelta
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build(subs, member, delay=delay)
    assert caught.value.status == 422
    assert fields_of(caught.value) == ["delay_seconds"]


def test_run_at_further_ahead_than_max_delay_is_a_422(subs: Submissions, member: User) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build(subs, member, run_at=utcnow() + MAX_DELAY + dt.timedelta(minutes=1))
    assert fields_of(caught.value) == ["run_at"]


def test_a_delay_of_exactly_max_delay_is_accepted(subs: Submissions, member: User) -> None:
    new = build(subs, member, delay=MAX_DELAY)
    assert new.status == JobStatus.SCHEDULED


# --- build: what is accepted ----------------------------------------------------------------


def test_a_plain_submission_is_queued_with_the_types_queue_and_retries(
    subs: Submissions, member: User
) -> None:
    new = build(subs, member, payload={"width": 3})
    assert new == NewJob(
        job_type="tests.resize",
        queue="images",
        payload={"width": 3, "ratio": 1.0, "label": ""},
        max_retries=5,
        owner_id=member.id,
    )


def test_a_run_at_in_the_past_is_queued(subs: Submissions, member: User) -> None:
    past = utcnow() - dt.timedelta(minutes=5)
    new = build(subs, member, run_at=past)
    assert new.status == JobStatus.QUEUED
    assert new.run_at == past


def test_a_run_at_in_the_future_is_scheduled_and_kept_in_utc(
    subs: Submissions, member: User
) -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    later = (utcnow() + dt.timedelta(minutes=5)).astimezone(paris)
    new = build(subs, member, run_at=later)
    assert new.status == JobStatus.SCHEDULED
    assert new.run_at == later
    assert new.run_at is not None and new.run_at.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("delay", [90, 90.0, dt.timedelta(seconds=90)])
def test_a_delay_schedules_the_job_that_far_ahead(
    subs: Submissions, member: User, delay: float | dt.timedelta
) -> None:
    new = build(subs, member, delay=delay)
    assert new.status == JobStatus.SCHEDULED
    assert close_to(new.run_at, utcnow() + dt.timedelta(seconds=90))


def test_a_zero_delay_is_queued_at_once(subs: Submissions, member: User) -> None:
    new = build(subs, member, delay=0)
    assert new.status == JobStatus.QUEUED
    assert close_to(new.run_at, utcnow())


def test_a_job_can_be_submitted_by_its_function(
    subs: Submissions, member: User, enqueuer: RecordingEnqueuer, load: Callable[..., Job]
) -> None:
    submitted = subs.submit_now(resize, Resize(width=7), owner_id=member.id)
    assert submitted.created is True
    row = load(submitted.job.id)
    assert (row.type, row.queue, row.payload) == (
        "tests.resize",
        "images",
        {"width": 7, "ratio": 1.0, "label": ""},
    )
    assert enqueuer.messages == [JobMessage(row.id, "tests.resize", "images")]


def test_a_job_without_a_payload_can_be_submitted_with_none(
    subs: Submissions, member: User
) -> None:
    assert subs.submit_now(nothing, None, owner_id=member.id).job.payload == {}


# --- submit: writing and publishing ---------------------------------------------------------


def test_a_queued_job_is_written_and_its_message_published(
    subs: Submissions,
    member: User,
    enqueuer: RecordingEnqueuer,
    load: Callable[..., Job],
    scheduled_at: list[dt.datetime],
) -> None:
    submitted = subs.submit(build(subs, member))
    row = load(submitted.job.id)
    assert row.status == JobStatus.QUEUED
    assert (row.run_at, row.next_attempt_at, row.parent_id) == (None, None, None)
    assert enqueuer.messages == [JobMessage(row.id, "tests.resize", "images")]
    assert scheduled_at == []


def test_a_scheduled_job_is_written_unpublished_and_the_sweeper_told_when_it_is_due(
    subs: Submissions,
    member: User,
    enqueuer: RecordingEnqueuer,
    load: Callable[..., Job],
    scheduled_at: list[dt.datetime],
) -> None:
    when = utcnow() + dt.timedelta(minutes=10)
    submitted = subs.submit(build(subs, member, run_at=when))
    row = load(submitted.job.id)
    assert row.status == JobStatus.SCHEDULED
    assert close_to(row.run_at, when, 0.001)
    assert row.next_attempt_at == row.run_at
    assert row.published_at is None
    assert enqueuer.messages == []
    assert len(scheduled_at) == 1 and close_to(scheduled_at[0], when, 0.001)


def test_a_job_whose_run_at_passed_is_published_at_once(
    subs: Submissions,
    member: User,
    enqueuer: RecordingEnqueuer,
    load: Callable[..., Job],
    scheduled_at: list[dt.datetime],
) -> None:
    past = utcnow() - dt.timedelta(seconds=30)
    submitted = subs.submit_now("tests.resize", {"width": 1}, owner_id=member.id, run_at=past)
    row = load(submitted.job.id)
    assert row.status == JobStatus.QUEUED
    assert close_to(row.run_at, past, 0.001)
    assert row.next_attempt_at is None
    assert [m.job_id for m in enqueuer.messages] == [row.id]
    assert scheduled_at == []


def test_a_keyed_replay_returns_the_first_job_and_publishes_nothing(
    subs: Submissions, member: User, enqueuer: RecordingEnqueuer
) -> None:
    first = subs.submit_now("tests.resize", {"width": 5}, owner_id=member.id, idempotency_key="k")
    again = subs.submit_now("tests.resize", {"width": 5}, owner_id=member.id, idempotency_key="k")
    assert (first.created, again.created) == (True, False)
    assert again.job.id == first.job.id
    assert len(enqueuer.messages) == 1


def test_a_keyed_replay_of_a_scheduled_job_does_not_wake_the_sweeper_again(
    subs: Submissions, member: User, scheduled_at: list[dt.datetime]
) -> None:
    options: dict[str, Any] = {"owner_id": member.id, "idempotency_key": "later", "delay": 600}
    first = subs.submit_now("tests.resize", {"width": 5}, **options)
    again = subs.submit_now("tests.resize", {"width": 5}, **options)
    assert again.job.id == first.job.id and again.created is False
    assert len(scheduled_at) == 1


def test_a_parent_is_recorded_on_the_child(
    subs: Submissions, member: User, load: Callable[..., Job]
) -> None:
    parent = subs.submit_now("tests.resize", {"width": 1}, owner_id=member.id).job
    child = subs.submit_now(
        "tests.resize", {"width": 2}, owner_id=member.id, parent_id=parent.id
    ).job
    assert load(child.id).parent_id == parent.id


class RecordingWriter:
    """A group-commit writer that writes each job at once, recording what it was given."""

    def __init__(self, db: sessionmaker[Session]) -> None:
        self.db = db
        self.written: list[NewJob] = []

    def write(self, new: NewJob) -> Future[Submitted]:
        self.written.append(new)
        future: Future[Submitted] = Future()
        future.set_result(Submitted(submissions.write_many(self.db, [new])[0], True))
        return future


def test_keyless_submissions_go_through_the_writer_and_keyed_ones_do_not(
    db: sessionmaker[Session], member: User, enqueuer: RecordingEnqueuer
) -> None:
    writer = RecordingWriter(db)
    subs = Submissions(db, REGISTRY, enqueuer, max_delay=MAX_DELAY, writer=writer)
    keyless = subs.submit_now("tests.resize", {"width": 1}, owner_id=member.id)
    keyed = subs.submit_now("tests.resize", {"width": 1}, owner_id=member.id, idempotency_key="a")
    assert [new.idempotency_key for new in writer.written] == [None]
    assert keyless.created and keyed.created
    assert [m.job_id for m in enqueuer.messages] == [keyless.job.id, keyed.job.id]


def test_a_failed_write_is_raised_and_publishes_nothing(
    subs: Submissions, member: User, enqueuer: RecordingEnqueuer
) -> None:
    new = build(subs, member)
    broken = NewJob(**{**new.__dict__, "owner_id": uuid.uuid4()})  # no such user: FK fails
    with pytest.raises(Exception):  # noqa: B017  (whatever the database raises)
        subs.submit(broken)
    assert enqueuer.messages == []


def test_a_publish_that_fails_after_the_commit_leaves_the_job_to_the_sweep(
    subs: Submissions, member: User, enqueuer: RecordingEnqueuer, caplog: pytest.LogCaptureFixture
) -> None:
    enqueuer.fail = True
    submitted = subs.submit(build(subs, member))
    assert submitted.created and submitted.job.status == "queued"
    assert "left to the sweep" in caplog.text


async def test_an_awaited_submission_publishes_on_the_loop_once_committed(
    subs: Submissions, member: User, enqueuer: RecordingEnqueuer
) -> None:
    submitted = await subs.asubmit(build(subs, member))
    assert submitted.created
    assert [m.job_id for m in enqueuer.messages] == [submitted.job.id]


def test_a_payload_with_a_backslash_followed_by_u0000_text_is_accepted(
    subs: Submissions, member: User
) -> None:
    # A Windows path or a regex: the text \u0000 (six characters) contains no NUL character.
    label = "C:\\u0000\\dir"
    assert "\x00" not in label
    assert build(subs, member, payload={"width": 1, "label": label}).payload["label"] == label
