"""The promtool checks cannot pass by skipping under `make test` or CI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests import metrics

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


@pytest.fixture
def no_promtool(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv(metrics.REQUIRE_PROMTOOL, raising=False)
    monkeypatch.delenv("CI", raising=False)
    return monkeypatch


@pytest.mark.parametrize("variable", [metrics.REQUIRE_PROMTOOL, "CI"])
def test_a_missing_promtool_fails_under_make_test_or_ci(
    no_promtool: pytest.MonkeyPatch, variable: str
) -> None:
    no_promtool.setenv(variable, "1" if variable != "CI" else "true")
    with pytest.raises(pytest.fail.Exception, match="promtool is not installed"):
        metrics.promtool_check("")


def test_a_missing_promtool_skips_elsewhere(no_promtool: pytest.MonkeyPatch) -> None:
    with pytest.raises(pytest.skip.Exception):
        metrics.promtool_check("")


def test_make_test_requires_promtool() -> None:
    text = MAKEFILE.read_text()
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", text, flags=re.MULTILINE)
    assert recipe is not None
    assert f"{metrics.REQUIRE_PROMTOOL}=1 " in recipe.group(1)
    promtool = re.search(r"^promtool:.*\n((?:\t.*\n)+)", text, flags=re.MULTILINE)
    assert promtool is not None and "exit 1" in promtool.group(1)  # apt failing stops make
