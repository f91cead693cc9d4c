"""The docs and deployment files agree with the code: settings, process types, pools, metrics."""

from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import conveyor.actors.all  # noqa: F401  (fills the registry)
from conveyor.background.stats import Reading
from conveyor.http.metrics import Metrics
from conveyor.http.schemas import BulkOut
from conveyor.metrics import JobMetrics
from conveyor.registry import JOBS
from conveyor.services.queues import QueueStats
from conveyor.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PROCFILE = ROOT / "Procfile"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

#: The Procfile's `release` step is docker-compose's one-shot `migrate` service.
COMPOSE_SERVICE_OF = {"release": "migrate"}
SETTING_NAME = re.compile(r"\bCONVEYOR_[A-Z][A-Z0-9_]*\b")


def procfile() -> dict[str, str]:
    """Process type -> command."""
    types: dict[str, str] = {}
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            types[name.strip()] = command.strip()
    return types


def compose_services() -> dict[str, list[str]]:
    """Service name -> its lines, from the top-level `services:` block (no YAML library)."""
    services: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_services = False
    for line in COMPOSE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):  # a top-level key
            in_services = line.rstrip() == "services:"
            current = None
            continue
        if in_services:
            match = re.fullmatch(r"  ([A-Za-z0-9._-]+):\s*", line)
            if match:
                current = services.setdefault(match.group(1), [])
            elif current is not None:
                current.append(line)
    return services


def compose_value(lines: list[str], key: str) -> str | None:
    """A service's scalar `key: value` (four spaces in), unquoted."""
    for line in lines:
        match = re.fullmatch(rf"    {key}: (.+)", line)
        if match:
            return match.group(1).strip().strip("\"'")
    return None


def compose_ports(lines: list[str]) -> list[str]:
    ports, inside = [], False
    for line in lines:
        if re.fullmatch(r"    ports:\s*", line):
            inside = True
        elif inside and line.startswith("      - "):
            ports.append(line.removeprefix("      - ").split("#")[0].strip().strip("\"'"))
        elif not line.startswith("      "):
            inside = False
    return ports


def rendered_default(value: Any) -> str:
    """How the README's settings table shows a default."""
    if value is None or value == () or isinstance(value, SecretStr):
        return "(unset)"
    if isinstance(value, bool):  # as the variable is written: true, false
        return f"`{str(value).lower()}`"
    if isinstance(value, frozenset):  # as the variable is written: a,b
        return "`" + ",".join(sorted(value)) + "`"
    if isinstance(value, dict):  # as the variable is written: key=value;key=value
        return "`" + ";".join(f"{k}={v}" for k, v in value.items()) + "`"
    return f"`{value}`"


def settings_rows() -> dict[str, list[str]]:
    """`CONVEYOR_X` -> the cells of its row in the README's settings table."""
    rows = {}
    for line in README.read_text().splitlines():
        match = re.match(r"\| `(CONVEYOR_[A-Z0-9_]+)` \|", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
    return rows


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme_with_its_default(name: str) -> None:
    variable = f"CONVEYOR_{name.upper()}"
    rows = settings_rows()
    assert variable in rows, f"README.md's settings table has no row for {variable}"
    default = rendered_default(Settings.model_fields[name].default)
    assert rows[variable][1] == default, f"{variable}: README says {rows[variable][1]}"


def test_the_readme_documents_no_setting_that_does_not_exist() -> None:
    known = {f"CONVEYOR_{name.upper()}" for name in Settings.model_fields}
    for path in (README, ROOT / "docs" / "architecture.md", ROOT / "docs" / "reliability.md"):
        unknown = set(SETTING_NAME.findall(path.read_text())) - known
        assert not unknown, f"{path.name} names settings that do not exist: {sorted(unknown)}"


def test_deployment_files_set_only_settings_that_exist() -> None:
    known = {f"CONVEYOR_{name.upper()}" for name in Settings.model_fields}
    for path in (COMPOSE, ENV_EXAMPLE):
        unknown = set(SETTING_NAME.findall(path.read_text())) - known
        assert not unknown, f"{path.name} sets settings that do not exist: {sorted(unknown)}"


def test_the_readme_starts_its_quick_start_with_make_dev_and_make_test() -> None:
    text = README.read_text()
    assert text.startswith("# Conveyor\n")
    sections = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert sections[0] == "Quick start", f"the first section is {sections[0]!r}"
    quick_start = text.split("\n## Quick start\n", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", quick_start, flags=re.DOTALL)
    assert block is not None, "the quick start has no code block"
    commands = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make dev", "make test"]


def test_the_makefile_has_the_quick_start_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("dev", "test"):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), f"no `make {target}`"


def test_every_procfile_process_type_is_a_compose_service_with_the_same_command() -> None:
    services = compose_services()
    for process_type, command in procfile().items():
        service = COMPOSE_SERVICE_OF.get(process_type, process_type)
        assert service in services, f"Procfile's {process_type!r} has no compose service"
        assert compose_value(services[service], "command") == command, service


def test_compose_builds_every_conveyor_service_from_the_dockerfile() -> None:
    services = compose_services()
    conveyor_services = [COMPOSE_SERVICE_OF.get(t, t) for t in procfile()]
    text = COMPOSE.read_text()
    assert re.search(r"^  build: \.$", text, flags=re.MULTILINE)
    for service in conveyor_services:
        assert "    <<: *conveyor-image" in services.get(service, []), service


def test_compose_binds_every_port_to_loopback() -> None:
    for service, lines in compose_services().items():
        for port in compose_ports(lines):
            assert port.startswith("127.0.0.1:"), f"{service} publishes {port}"


def test_every_server_in_compose_has_a_healthcheck() -> None:
    for service, lines in compose_services().items():
        command = compose_value(lines, "command") or ""
        if is_worker(command) or service == COMPOSE_SERVICE_OF["release"]:
            continue  # workers and the one-shot migration serve nothing to check
        assert "    healthcheck:" in lines, f"{service} has no healthcheck"


def is_worker(command: str) -> bool:
    return command.startswith(("dramatiq ", "conveyor worker "))


def worker_module(args: list[str]) -> str:
    """The pool module a worker command runs (`dramatiq <module>`, `conveyor worker <pool>`)."""
    return args[1] if args[0] == "dramatiq" else f"conveyor.workers.{args[2]}"


def queues_of(args: list[str]) -> list[str]:
    """The queues a worker command serves: its `--queues` option's values, or else those of a
    `conveyor worker <pool>`, which serves its pool's queue (named after the pool)."""
    if "--queues" not in args:
        return [args[2]] if args[:2] == ["conveyor", "worker"] else []
    values = []
    for value in args[args.index("--queues") + 1 :]:
        if value.startswith("-"):
            break
        values.append(value)
    return values


def conveyor_queues() -> set[str]:
    """The queues of Conveyor's own job types (tests may register more)."""
    return {t.queue for t in JOBS if t.fn.__module__.startswith("conveyor.")}


@pytest.mark.parametrize("command", [c for c in procfile().values() if is_worker(c)])
def test_every_procfile_pool_names_a_worker_module_and_its_queues(command: str) -> None:
    args = shlex.split(command)
    module = worker_module(args)
    assert module.startswith("conveyor.workers."), module
    pool = module.removeprefix("conveyor.workers.")
    assert (ROOT / "conveyor" / "workers" / f"{pool}.py").is_file(), module
    assert importlib.util.find_spec(module) is not None, module
    queues = queues_of(args)
    assert queues, f"{command!r} names no --queues"
    for queue in queues:
        assert queue in conveyor_queues(), f"no job type uses queue {queue!r}"


def test_every_queue_has_a_pool_in_the_procfile() -> None:
    served = {q for c in procfile().values() if is_worker(c) for q in queues_of(shlex.split(c))}
    missing = conveyor_queues() - served
    assert not missing, f"no Procfile worker serves {sorted(missing)}"


def test_every_metric_is_documented_in_the_readme() -> None:
    text = README.read_text()
    metrics = Metrics()
    metrics.include(JobMetrics().registry)
    reading = Reading(0.0, [QueueStats("system")], 0, {"system": 1})
    metrics.include_database(lambda: reading)
    for family in metrics.registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}`" in text, f"README.md does not document the metric {name}"


def test_the_dockerfile_builds_on_python_311_slim_as_a_non_root_user() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    assert "FROM python:3.11-slim" in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_an_installed_package_ships_its_migrations() -> None:
    setuptools = pytest.importorskip("setuptools")
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    include = [p.strip() for p in config["options.packages.find"]["include"].split(",")]
    finders = {
        "find:": setuptools.find_packages,
        "find_namespace:": setuptools.find_namespace_packages,
    }
    finder = finders[config["options"]["packages"].strip()]
    packages = set(finder(where=str(ROOT), include=include))
    package_data = config["options.package_data"]["conveyor"]
    for package, pattern in [
        ("conveyor.models.migrations", "models/migrations/*.py"),
        ("conveyor.models.migrations.versions", "models/migrations/versions/*.py"),
    ]:
        assert package in packages or pattern in package_data, f"{package} is not installed"


@pytest.mark.parametrize(
    "route", ["POST /v1/jobs/cancel", "POST /v1/jobs/retry", "POST /v1/queues/{queue}/purge"]
)
def test_the_route_table_lists_every_field_of_a_bulk_answer(route: str) -> None:
    [row] = [line for line in README.read_text().splitlines() if line.startswith(f"| `{route}")]
    answer = re.search(r"`200` `\{([^}]*)\}`", row)
    assert answer is not None, row
    listed = {field.strip().strip('"') for field in answer.group(1).split(",")}
    assert listed == set(BulkOut.model_fields), row
