"""A worker pool's entry module loads its own job modules and nothing of the web side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
import conveyor.workers.system as pool
from conveyor.registry import JOBS
print(json.dumps({
    "modules": sorted(name for name in sys.modules if name.startswith("conveyor")),
    "jobs": sorted(t.name for t in JOBS),
    "actors": sorted(pool.broker.get_declared_actors()),
    "queues": sorted(pool.broker.get_declared_queues()),
}))
"""


def test_the_system_pool_imports_neither_every_job_module_nor_the_http_layer(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        CONVEYOR_BROKER_URL="stub://",
        CONVEYOR_DATABASE_URL=f"sqlite:///{tmp_path / 'conveyor.db'}",
        CONVEYOR_REDIS_URL="",
        CONVEYOR_LOG_LEVEL="WARNING",
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        cwd=tmp_path,  # no .env file here
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    modules = set(seen["modules"])
    assert "conveyor.workers.system" in modules and "conveyor.actors.system" in modules
    assert "conveyor.actors.all" not in modules
    assert "conveyor.http" not in modules
    assert not [name for name in modules if name.startswith("conveyor.http.")]
    assert "conveyor.dev" not in modules and "conveyor.cli" not in modules
    assert seen["jobs"] == ["system.echo", "system.fail", "system.sleep"]
    assert seen["actors"] == seen["jobs"]
    assert [q for q in seen["queues"] if not q.endswith((".DQ", ".XQ"))] == ["system"]


def test_the_notifications_pool_serves_its_queue_alone_with_its_resources(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        CONVEYOR_BROKER_URL="stub://",
        CONVEYOR_DATABASE_URL=f"sqlite:///{tmp_path / 'conveyor.db'}",
        CONVEYOR_REDIS_URL="",
        CONVEYOR_LOG_LEVEL="WARNING",
        CONVEYOR_PUBLIC_URL="https://conveyor.example.com",
    )
    probe = PROBE.replace("conveyor.workers.system", "conveyor.workers.notifications")

    def boot(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", probe],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    refused = boot({k: v for k, v in env.items() if k != "CONVEYOR_PUBLIC_URL"})
    assert refused.returncode != 0 and "CONVEYOR_PUBLIC_URL is not set" in refused.stderr
    done = boot(env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    modules = set(seen["modules"])
    assert "conveyor.actors.all" not in modules and "conveyor.actors.system" not in modules
    assert not [name for name in modules if name.split(".")[:2] == ["conveyor", "http"]]
    assert seen["jobs"] == ["notifications.deliver"] == seen["actors"]
    assert [q for q in seen["queues"] if not q.endswith((".DQ", ".XQ"))] == ["notifications"]
