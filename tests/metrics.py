"""Reading Prometheus expositions in tests, and checking them with `promtool`."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """(sample name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def names(text: str) -> set[str]:
    return {sample_name for sample_name, _ in samples(text)}


#: Set by `make test` (and any CI, which sets `CI`): a missing promtool fails the checks.
REQUIRE_PROMTOOL = "REQUIRE_PROMTOOL"


def promtool_required() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in (REQUIRE_PROMTOOL, "CI"))


def _promtool() -> str:
    """promtool's path. Without promtool: fail under `make test` or CI (which must not pass
    by skipping), else skip."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if promtool_required():
            pytest.fail(
                "promtool is not installed, and the metrics checks need it under `make test` "
                "or CI: install Debian's prometheus package (`make promtool` does)"
            )
        pytest.skip("promtool is not installed (make test installs Debian's prometheus)")
    return promtool


def promtool_check_rules(path: str) -> None:
    """Fail unless `promtool check rules` accepts the rule file at `path` (without promtool:
    as `promtool_check`)."""
    done = subprocess.run(
        [_promtool(), "check", "rules", path], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, f"promtool check rules:\n{done.stdout}{done.stderr}"


def promtool_test_rules(path: str) -> None:
    """Fail unless `promtool test rules` passes the rule tests at `path` (without promtool:
    as `promtool_check`)."""
    done = subprocess.run(
        [_promtool(), "test", "rules", path], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, f"promtool test rules:\n{done.stdout}{done.stderr}"


def promtool_check(text: str) -> None:
    """Fail unless `promtool check metrics` accepts the exposition. Without promtool: fail
    under `make test` or CI (which must not pass by skipping), else skip."""
    promtool = _promtool()
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, f"promtool check metrics:\n{done.stdout}{done.stderr}"
