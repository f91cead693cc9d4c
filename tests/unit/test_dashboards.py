"""The Grafana dashboard and the Prometheus alert rules in docs/: the rules pass `promtool
check rules`, the dashboard is valid JSON with a Prometheus data source input, and every
metric either queries is one that Conveyor exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from conveyor.background.stats import Reading
from conveyor.http.metrics import DatabaseCollector, Metrics
from conveyor.metrics import JobMetrics
from conveyor.notifications.metrics import NotificationMetrics
from conveyor.services.capacity import PoolCapacity
from conveyor.services.queues import QueueStats
from tests.metrics import promtool_check_rules, promtool_test_rules

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana" / "conveyor.json"
ALERTS = DOCS / "prometheus" / "alerts.yml"
#: Our metric names in a PromQL expression (labels and functions are not ours).
NAME = re.compile(r"\bconveyor_[a-z0-9_]+")
#: The sample names of each kind of metric family, from its name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def _families() -> Iterator[Metric]:
    yield from Metrics().registry.collect()
    yield from JobMetrics().registry.collect()
    notifications = CollectorRegistry()
    NotificationMetrics(notifications)
    yield from notifications.collect()
    pool = PoolCapacity("system", ["system"], 1, 8, 0.1, 2.0, 0, 1, 0.125, 1.0, 1)
    reading = Reading(0.0, [QueueStats("system")], 0, {"system": 1}, [pool])
    yield from DatabaseCollector(lambda: reading).collect()


def exposed() -> set[str]:
    """The sample names Conveyor's expositions (web, worker pools) can have."""
    return {family.name + suffix for family in _families() for suffix in SUFFIXES[family.type]}


def _expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from _expressions(item)


def test_the_alert_rules_pass_promtool() -> None:
    promtool_check_rules(str(ALERTS))


#: `promtool test rules` input: two queues whose oldest job waits for 20 minutes, one paused.
WAITING_TESTS = """
rule_files: [{alerts}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'conveyor_queue_oldest_waiting_age_seconds{{queue="system"}}'
        values: '700+60x20'
      - series: 'conveyor_queue_oldest_waiting_age_seconds{{queue="reports"}}'
        values: '700+60x20'
      - series: 'conveyor_queue_paused{{queue="system"}}'
        values: '0x20'
      - series: 'conveyor_queue_paused{{queue="reports"}}'
        values: '1x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: ConveyorQueueWaitingTooLong
        exp_alerts:
          - exp_labels: {{queue: system, severity: warning}}
            exp_annotations:
              summary: "Queue system: a job has waited over 10 minutes"
              description: >-
                The oldest waiting job of queue system has been due for 21m 40s. Its pool has
                too few workers for the load, or none (a paused queue does not raise this
                alert). Compare conveyor_pool_desired_workers with conveyor_workers_alive, and
                see `conveyor queues`.
"""


def test_a_paused_queue_whose_jobs_wait_raises_no_alert(tmp_path: Path) -> None:
    tests = tmp_path / "waiting_test.yml"
    tests.write_text(WAITING_TESTS.format(alerts=json.dumps(str(ALERTS))))
    promtool_test_rules(str(tests))


def _alerts() -> list[str]:
    """Each alert rule of the file, as its text (from its `- alert:` line to the next)."""
    return re.split(r"\n(?=\s*- alert:)", ALERTS.read_text())[1:]


def test_each_alert_says_what_happened_and_what_to_do() -> None:
    rules = _alerts()
    names = {re.search(r"- alert: (\w+)", rule).group(1) for rule in rules}  # type: ignore[union-attr]
    assert {
        "ConveyorHighFailureRate",
        "ConveyorQueueWaitingTooLong",
        "ConveyorPoolHasNoWorker",
        "ConveyorWorkerHeartbeatStale",
        "ConveyorPoolBelowDesiredWorkers",
    } <= names
    for rule in rules:
        assert "summary: " in rule and "description: " in rule, rule


def test_the_dashboard_has_a_prometheus_input_and_the_promised_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
    queried = {name for e in _expressions(dashboard) for name in NAME.findall(e)}
    assert {
        "conveyor_jobs_finished_total",
        "conveyor_queue_jobs",
        "conveyor_queue_oldest_waiting_age_seconds",
        "conveyor_job_run_duration_seconds_bucket",
        "conveyor_worker_up",
        "conveyor_pool_desired_workers",
        "conveyor_workers_alive",
        "conveyor_http_request_duration_seconds_bucket",
    } <= queried
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_the_dashboard_queries_is_exposed() -> None:
    queried = {
        name for e in _expressions(json.loads(DASHBOARD.read_text())) for name in NAME.findall(e)
    }
    assert queried - exposed() == set()


def test_every_metric_the_alerts_name_is_exposed() -> None:
    lines = [line for line in ALERTS.read_text().splitlines() if not line.lstrip().startswith("#")]
    named = set(NAME.findall("\n".join(lines)))
    assert len(named) >= 5
    assert named - exposed() == set()
