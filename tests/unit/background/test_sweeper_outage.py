"""The sweeper through a broker outage: it keeps trying every pass, and leaves saying so to
the enqueuer's one WARNING (no line, and no traceback, per pass)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor.background.sweeper import Sweeper
from conveyor.errors import BrokerUnavailableError
from conveyor.models import Job, JobStatus
from conveyor.models.base import utcnow
from conveyor.services.jobs import JobMessage
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer


class UnreachableEnqueuer(RecordingEnqueuer):
    """Fails as the broker enqueuer does while the broker is down."""

    def publish(self, messages: Sequence[JobMessage]) -> None:
        if self.fail:
            raise BrokerUnavailableError("the broker did not take the message: refused")
        super().publish(messages)


def test_sweeps_during_a_broker_outage_log_nothing_above_debug(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    load: Callable[..., Job],
    announcer: RecordingAnnouncer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    waiting = make_job()
    due = make_job()
    set_job(due.id, status=JobStatus.SCHEDULED.value, next_attempt_at=utcnow())
    enqueuer = UnreachableEnqueuer()
    enqueuer.fail = True
    sweeper = Sweeper(
        db,
        enqueuer,
        announcer,
        interval=60.0,
        grace=dt.timedelta(0),
        requeue_after=dt.timedelta(minutes=15),
        max_worker_losses=2,
    )
    for _ in range(5):
        sweeper.sweep_once()
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG] == [
        "queued 1 scheduled job(s) that came due"
    ]
    assert any("sweep stopped at the broker" in r.getMessage() for r in caplog.records)
    assert load(waiting.id).published_at is None
    assert (load(due.id).status, load(due.id).published_at) == (JobStatus.QUEUED, None)
    enqueuer.fail = False
    sweeper.sweep_once()
    assert sorted(m.job_id for m in enqueuer.messages) == sorted([waiting.id, due.id])
