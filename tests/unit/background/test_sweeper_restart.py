"""The sweeper asks the broker whether it lost its data at most once a second, and then
publishes again what the broker no longer holds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor.background import sweeper as sweeper_module
from conveyor.background.sweeper import Sweeper
from conveyor.models.base import utcnow
from tests.unit.support import MakeJob, RecordingAnnouncer, RecordingEnqueuer


def test_a_sweep_asks_about_a_broker_restart_at_most_once_a_second_and_republishes(
    make_job: MakeJob,
    db: sessionmaker[Session],
    set_job: Callable[..., None],
    enqueuer: RecordingEnqueuer,
    announcer: RecordingAnnouncer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(sweeper_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    sweeper = Sweeper(
        db,
        enqueuer,
        announcer,
        interval=0.2,
        grace=dt.timedelta(minutes=1),
        requeue_after=dt.timedelta(minutes=15),
        max_worker_losses=2,
    )
    job = make_job()
    set_job(job.id, published_at=utcnow() - dt.timedelta(seconds=5))

    sweeper.sweep_once()
    assert enqueuer.restart_checks == 1
    enqueuer.restart = "run-2"  # the broker restarted without its messages
    clock[0] += 0.5
    sweeper.sweep_once()
    assert enqueuer.restart_checks == 1  # not yet: at most once a second
    assert enqueuer.messages == []
    clock[0] += 0.6
    sweeper.sweep_once()
    assert enqueuer.restart_checks == 2
    assert [m.job_id for m in enqueuer.messages] == [job.id]
