"""The capacity signal: the model (busy threads from arrivals and backlog, the floor, the cap)
and its inputs read from the job rows and the worker registry."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor.ids import first_uuid7_at, uuid7
from conveyor.models import Worker
from conveyor.models.base import utcnow
from conveyor.services import capacity, workers
from conveyor.services.capacity import Model, QueueLoad, plan
from conveyor.settings import Settings
from tests.unit.support import MakeJob

SetJob = Callable[..., None]
MODEL = Model(target_utilization=0.5, drain_seconds=100, max_workers=20)


def worker(pool: str = "system", threads: int = 4, jobs: int = 0) -> Worker:
    return Worker(id=uuid.uuid4().hex, pool=pool, queues=[pool], threads=threads, jobs_in_hand=jobs)


def test_arrivals_and_backlog_each_ask_for_threads() -> None:
    # 2 jobs/s of 3 s at 50 %: 12 threads; 200 waiting of 3 s in 100 s: 6 threads.
    load = QueueLoad("system", arrival_per_second=2, mean_seconds=3, backlog=200)
    found = plan("system", [load], [worker(threads=4, jobs=3), worker(threads=4, jobs=1)], MODEL)
    assert found.busy_threads == pytest.approx(18)
    assert found.desired == 5  # ceil(18 / 4)
    assert (found.processes, found.threads, found.utilization) == (2, 4, 0.5)
    assert (found.arrival_per_second, found.mean_seconds, found.backlog) == (2, 3, 200)


def test_a_pool_with_nothing_to_do_may_scale_to_zero() -> None:
    found = plan("system", [QueueLoad("system", mean_seconds=1.0)], [], MODEL)
    assert (found.desired, found.utilization, found.threads) == (0, None, capacity.DEFAULT_THREADS)


@pytest.mark.parametrize(
    "load",
    [
        QueueLoad("system", arrival_per_second=0.01),  # no run time known yet
        QueueLoad("system", backlog=1),
        QueueLoad("system", running=1),
        QueueLoad("system", arrival_per_second=0.001, mean_seconds=0.01),
    ],
)
def test_a_pool_with_anything_to_do_keeps_one_process(load: QueueLoad) -> None:
    assert plan("system", [load], [], MODEL).desired == 1


def test_a_paused_queue_asks_only_for_its_running_jobs() -> None:
    loads = [
        QueueLoad("system", arrival_per_second=5, mean_seconds=3, backlog=900, paused=True),
        QueueLoad("extra", arrival_per_second=1, mean_seconds=2, backlog=0),
    ]
    found = plan("system", loads, [], MODEL)
    assert found.busy_threads == pytest.approx(4)  # 1/s of 2 s at 50 %: the other queue's
    assert (found.backlog, found.arrival_per_second, found.mean_seconds) == (0, 1, 2)
    assert found.paused == ["system"]
    alone = [QueueLoad("system", arrival_per_second=5, backlog=9, paused=True)]
    assert plan("system", alone, [], MODEL).desired == 0
    alone = [QueueLoad("system", backlog=9, running=1, paused=True)]
    assert plan("system", alone, [], MODEL).desired == 1


def test_the_figure_is_capped() -> None:
    load = QueueLoad("system", arrival_per_second=1000, mean_seconds=10)
    assert plan("system", [load], [], MODEL).desired == 20


def test_the_mean_run_time_of_a_pool_weighs_its_queues_by_arrivals() -> None:
    loads = [
        QueueLoad("a", arrival_per_second=3, mean_seconds=1),
        QueueLoad("b", arrival_per_second=1, mean_seconds=5),
        QueueLoad("c", backlog=4),
    ]
    found = plan("a", loads, [], MODEL)
    assert found.mean_seconds == pytest.approx(2)
    assert found.queues == ["a", "b", "c"]


def test_first_uuid7_at_is_below_every_id_made_since() -> None:
    moment = utcnow()
    assert first_uuid7_at(moment) <= uuid7()
    assert first_uuid7_at(moment + dt.timedelta(seconds=1)) > uuid7()


def test_the_inputs_come_from_the_job_rows_and_the_live_workers(
    db: sessionmaker[Session], make_job: MakeJob, set_job: SetJob
) -> None:
    now = utcnow()
    for seconds in (2, 4):
        done = make_job()
        set_job(
            done.id,
            status="succeeded",
            started_at=now - dt.timedelta(minutes=1, seconds=seconds),
            finished_at=now - dt.timedelta(minutes=1),
        )
    stale = make_job()  # finished too long ago to count
    set_job(
        stale.id,
        status="failed",
        started_at=now - dt.timedelta(hours=2),
        finished_at=now - dt.timedelta(hours=1),
    )
    make_job()  # waits
    make_job(queue="reports", job_type="reports.monthly")  # a pool with no live process
    process = workers.WorkerProcess("w1", "system", "host", 1, ["system"], 4, now)
    workers.beat(db, process, 2)
    settings = Settings(capacity_target_utilization=0.5, capacity_drain_seconds=100)

    found = {p.pool: p for p in capacity.desired(db, settings)}

    system = found["system"]
    assert system.arrival_per_second == pytest.approx(4 / 300)  # made in the last 5 minutes
    assert system.mean_seconds == pytest.approx(3, abs=0.01)
    assert (system.backlog, system.processes, system.threads) == (1, 1, 4)
    assert system.utilization == 0.5
    assert system.busy_threads == pytest.approx(4 / 300 * 3 / 0.5 + 1 * 3 / 100, rel=0.01)
    assert system.desired == 1
    reports = found["reports"]
    assert (reports.processes, reports.backlog, reports.mean_seconds) == (0, 1, None)
    assert reports.desired == 1
