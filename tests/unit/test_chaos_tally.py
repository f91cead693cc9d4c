"""The verdict of `bench/chaos.py`: which jobs count as lost, wrongly failed, late, re-run
and duplicated, given what the clients were told and what the database holds."""

from __future__ import annotations

import uuid
from typing import Any

from bench.chaos_tally import JobRow, Submission, tally

BOUND = 60.0


def row(**fields: Any) -> JobRow:
    defaults: dict[str, Any] = {
        "id": uuid.uuid4(),
        "job_type": "system.echo",
        "status": "succeeded",
        "attempts": 1,
        "due": 1000.0,
        "finished_at": 1001.0,
        "idempotency_key": None,
        "seq": None,
        "error_type": None,
        "succeeded_events": 1,
    }
    return JobRow(**{**defaults, **fields})


def acknowledged(job: JobRow, seq: int = 1, key: str | None = None) -> Submission:
    return Submission(seq=seq, job_type=job.job_type, key=key, job_id=job.id, tries=1)


def test_jobs_that_succeeded_once_in_time_pass() -> None:
    jobs = [row(seq=1), row(seq=2, due=1000.0, finished_at=1059.0)]
    t = tally([acknowledged(j, j.seq or 0) for j in jobs], jobs, BOUND)

    assert (t.submitted, t.accepted, t.unacknowledged) == (2, 2, 0)
    assert t.passed
    assert t.delay_max == 59.0


def test_an_acknowledged_job_without_a_row_or_still_waiting_is_lost() -> None:
    waiting = row(status="queued", finished_at=None)
    missing = uuid.uuid4()
    subs = [
        acknowledged(waiting),
        Submission(seq=2, job_type="system.echo", key=None, job_id=missing, tries=1),
    ]

    t = tally(subs, [waiting], BOUND)

    assert len(t.lost) == 2
    assert any(str(missing) in case for case in t.lost)
    assert not t.passed


def test_a_committed_row_whose_answer_was_lost_is_still_checked() -> None:
    """The client saw no 202, but the job was committed: it must run all the same."""
    orphan = row(status="retrying", finished_at=None)
    sub = Submission(seq=1, job_type="system.echo", key=None, tries=1, connection_errors=1)

    t = tally([sub], [orphan], BOUND)

    assert (t.accepted, t.abandoned, t.unacknowledged) == (0, 1, 1)
    assert len(t.lost) == 1


def test_a_failed_job_is_wrongly_failed_not_lost() -> None:
    failed = row(status="failed", error_type="OperationalError", job_type="system.sleep")

    t = tally([acknowledged(failed)], [failed], BOUND)

    assert t.lost == []
    assert len(t.wrongly_failed) == 1
    assert "OperationalError" in t.wrongly_failed[0]


def test_a_job_finished_past_the_bound_after_it_was_due_is_late() -> None:
    delayed = row(due=2000.0, finished_at=2000.0 + BOUND + 0.5)  # due at its run_at
    on_time = row(due=2000.0, finished_at=2000.0 + BOUND)

    t = tally([], [delayed, on_time], BOUND)

    assert [case.split(":")[0] for case in t.late] == [str(delayed.id)]


def test_reruns_are_counted_but_do_not_fail_the_run() -> None:
    rerun = row(attempts=3)

    t = tally([acknowledged(rerun)], [rerun], BOUND)

    assert len(t.rerun) == 1
    assert t.passed


def test_two_succeeded_events_or_two_rows_for_one_key_or_submission_are_duplicates() -> None:
    twice = row(succeeded_events=2)
    keyed = [row(idempotency_key="k-1"), row(idempotency_key="k-1")]
    echoed = [row(seq=7), row(seq=7)]
    both = [row(idempotency_key="k-2", seq=8), row(idempotency_key="k-2", seq=8)]

    t = tally([], [twice, *keyed, *echoed, *both], BOUND)

    assert len(t.duplicated) == 4  # the pair sharing both key and seq counts once
    assert not t.passed


def test_client_side_figures_add_up_over_tries() -> None:
    job = row()
    retried = Submission(
        seq=1, job_type="system.echo", key="k", job_id=job.id, tries=4,
        connection_errors=2, server_errors=1,
    )  # fmt: skip
    gave_up = Submission(seq=2, job_type="system.echo", key="k2", tries=3, connection_errors=3)
    refused = Submission(seq=3, job_type="system.echo", key=None, tries=1, rejected="422 …")

    t = tally([retried, gave_up, refused], [job], BOUND)

    assert (t.requests, t.client_errors, t.rejected) == (8, 6, 1)
    assert (t.accepted, t.abandoned, t.given_up) == (1, 2, 1)
