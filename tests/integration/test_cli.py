"""The `conveyor` command, run in-process on a real migrated PostgreSQL database."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor import __version__
from conveyor.cli import main, parser
from conveyor.db import transaction
from conveyor.models import AuditEvent, Job, JobEvent, JobStatus, Role, User
from conveyor.models.base import utcnow
from conveyor.models.job import jobs_t
from conveyor.models.migrate import head
from conveyor.security.passwords import verify_password
from conveyor.services import operations, submissions
from conveyor.services.auth import TokenConfig, TokenVerifier
from conveyor.services.submissions import NewJob
from conveyor.services.users import create_user
from conveyor.settings import get_settings
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration

SECRET = "test-secret-key-that-is-long-enough-for-hs256"
ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, rabbitmq_url: str, redis_prefix: str
) -> Iterator[None]:
    """The CLI's settings: the run's database, RabbitMQ vhost and Redis prefix."""
    monkeypatch.chdir("/")  # no .env of the checkout
    for name, value in {
        "DATABASE_URL": database_url,
        "BROKER_URL": rabbitmq_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": redis_prefix,
        "SECRET_KEY": SECRET,
    }.items():
        monkeypatch.setenv(f"CONVEYOR_{name}", value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def leaves(
    command: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from leaves(sub, (*path, name))


def test_every_command_has_help_with_a_description_and_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands = list(leaves(parser()))
    assert ("jobs", "retry") in commands and ("users", "deactivate") in commands
    for command in [(), *commands]:
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0
        assert "examples:\n  conveyor" in out, command
        assert out.split("\n\n")[1].strip(), f"{command}: no description"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"conveyor {__version__}\n"


def test_users_list_deactivate_and_role(
    env: None, pg_db: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "users", "create", "alice@example.com")[0] == 0
    assert run(capsys, "users", "create", "ops@example.com", "--role", "admin")[0] == 0

    code, out, _ = run(capsys, "users", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["EMAIL", "ROLE", "ACTIVE", "CREATED_AT", "ID"]
    assert lines[1].split()[:3] == ["alice@example.com", "member", "yes"]

    assert run(capsys, "users", "deactivate", "alice@example.com")[0] == 0
    assert run(capsys, "users", "role", "alice@example.com", "admin")[0] == 0
    code, out, _ = run(capsys, "users", "list", "--json", "--role", "admin")
    listed = {u["email"]: u for u in json.loads(out)}
    assert listed["alice@example.com"]["active"] is False
    assert set(listed) == {"alice@example.com", "ops@example.com"}

    code, _, err = run(capsys, "tokens", "issue", "alice@example.com")
    assert code == 1 and err.count("\n") == 1
    assert "deactivated" in err and "conveyor users activate alice@example.com" in err
    assert run(capsys, "users", "activate", "alice@example.com")[0] == 0
    code, out, _ = run(capsys, "tokens", "issue", "alice@example.com", "--days", "7")
    assert code == 0 and out.count(".") == 2  # a JWT

    code, _, err = run(capsys, "users", "role", "nobody@example.com", "admin")
    assert (code, err) == (1, "conveyor: no user with email nobody@example.com\n")


@pytest.mark.parametrize(
    "days", ["0", "-1", "nan", "inf", "1e9", "91", "1e-300", "0.00000001", "0.0006"]
)
def test_tokens_issue_refuses_days_out_of_range(
    env: None, pg_db: sessionmaker[Session], capsys: pytest.CaptureFixture[str], days: str
) -> None:
    create_user(pg_db, "alice@example.com")
    try:
        code, out, err = run(capsys, "tokens", "issue", "alice@example.com", "--days", days)
    except SystemExit as exit_:  # argparse's refusal
        code, (out, err) = int(exit_.code or 0), capsys.readouterr()
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and "days" in err and "Traceback" not in err
    assert "one minute" in err  # the range, from its lower end


def test_tokens_issue_gives_a_token_of_one_minute(
    env: None, pg_db: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    create_user(pg_db, "alice@example.com")
    code, out, _ = run(capsys, "tokens", "issue", "alice@example.com", "--days", str(1 / 1440))
    assert code == 0 and out.count(".") == 2


def _job(db: sessionmaker[Session], owner: User, status: JobStatus, **values: Any) -> Job:
    new = NewJob(
        job_type="system.echo", queue="system", payload={"n": 1}, max_retries=0, owner_id=owner.id
    )
    job, _ = submissions.write(db, new)
    with transaction(db) as session:
        session.execute(
            update(jobs_t).where(jobs_t.c.id == job.id).values(status=status.value, **values)
        )
    return job


def _status(db: sessionmaker[Session], job_id: uuid.UUID) -> str:
    with db() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status


def test_errors_lists_the_groups_of_failed_jobs(
    env: None, pg_db: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    alice = create_user(pg_db, "alice@example.com")
    assert run(capsys, "errors")[2] == "no failed jobs\n"
    error = {"type": "RuntimeError", "message": "boom"}
    for _ in range(2):
        _job(
            pg_db,
            alice,
            JobStatus.FAILED,
            error=error,
            error_type="RuntimeError",
            finished_at=utcnow(),
        )

    code, out, _ = run(capsys, "errors")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["TYPE", "ERROR_TYPE", "COUNT"]
    assert out.splitlines()[1].split()[:3] == ["system.echo", "RuntimeError", "2"]
    code, out, _ = run(capsys, "errors", "--json")
    [group] = json.loads(out)
    assert (group["type"], group["error_type"], group["count"]) == (
        "system.echo",
        "RuntimeError",
        2,
    )
    assert group["message"] == "boom"


def test_jobs_list_show_cancel_retry_and_purge(
    env: None,
    pg_db: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = create_user(pg_db, "alice@example.com")
    bob = create_user(pg_db, "bob@example.com", Role.ADMIN)
    trace = (
        'Traceback (most recent call last):\n  File "job.py", line 3, in run\nRuntimeError: boom\n'
    )
    error = {"type": "RuntimeError", "message": "boom", "traceback": trace}
    failed = _job(pg_db, alice, JobStatus.FAILED, attempts=1, error=error, finished_at=utcnow())
    queued = [_job(pg_db, alice, JobStatus.QUEUED) for _ in range(2)]
    bobs = _job(pg_db, bob, JobStatus.QUEUED)

    code, out, _ = run(capsys, "jobs", "list", "--status", "failed")
    assert code == 0
    assert out.splitlines()[0].split()[:4] == ["ID", "TYPE", "QUEUE", "STATUS"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(failed.id)]
    code, out, _ = run(capsys, "jobs", "list", "--owner", "alice@example.com", "--json")
    assert [j["id"] for j in json.loads(out)] == [str(j.id) for j in (*reversed(queued), failed)]

    code, out, _ = run(capsys, "jobs", "show", str(failed.id))
    assert code == 0 and "status:" in out and "boom" in out
    assert "\ntraceback:\nTraceback (most recent call last):\n" in out
    code, out, _ = run(capsys, "jobs", "show", str(failed.id), "--json")
    assert json.loads(out)["error"] == error

    code, out, _ = run(capsys, "jobs", "retry", str(failed.id))
    assert code == 0 and _status(pg_db, failed.id) == "queued"
    code, _, err = run(capsys, "jobs", "retry", str(failed.id))
    assert code == 1 and "the job is queued" in err
    with pg_db() as session:
        retried_by = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == failed.id).order_by(JobEvent.id)
        ).all()[-1]
    assert retried_by is not None and retried_by.startswith("retried by cli:")

    code, out, _ = run(capsys, "jobs", "cancel", str(queued[0].id))
    assert code == 0 and _status(pg_db, queued[0].id) == "cancelled"
    code, out, _ = run(capsys, "jobs", "cancel", "--owner", "bob@example.com")
    assert code == 0 and out.startswith("cancelled 1 job(s)")
    assert _status(pg_db, bobs.id) == "cancelled"
    code, out, _ = run(capsys, "jobs", "retry", "--status", "cancelled", "--type", "system.echo")
    assert code == 0 and out == "retried 2 job(s)\n"

    monkeypatch.setattr(operations, "DEFAULT_BULK_LIMIT", 3)  # purged over two calls
    code, out, _ = run(capsys, "jobs", "purge", "system")
    assert code == 0 and out == "queue system: cancelled 4 waiting job(s)\n"
    assert {_status(pg_db, j.id) for j in (failed, *queued, bobs)} == {"cancelled"}

    code, _, err = run(capsys, "jobs", "cancel")
    assert code == 1 and "give a job id, or at least one filter" in err


def test_queues_pause_resume_and_the_listing(
    env: None, pg_db: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    alice = create_user(pg_db, "alice@example.com")
    code, out, _ = run(capsys, "queues", "pause", "system", "--reason", "maintenance")
    assert (code, out) == (
        0,
        "queue system: paused; its workers take none of its jobs until resumed\n",
    )
    code, out, _ = run(capsys, "queues", "pause", "system")
    assert (code, out) == (0, "queue system: paused already\n")
    code, _, err = run(capsys, "queues", "pause", "nowhere")
    assert code == 1 and "no queue 'nowhere'" in err
    waiting = _job(pg_db, alice, JobStatus.QUEUED)  # parked: no message

    code, out, _ = run(capsys, "queues")
    header, *lines = out.splitlines()
    columns = "QUEUE WAITING SCHEDULED RUNNING FAILED OLDEST_WAITING CONSUMERS PAUSED"
    assert header.split() == columns.split()
    system = next(line.split() for line in lines if line.startswith("system"))
    assert system[1] == "1" and system[6] == "0" and system[7:] == ["for", "0s"]
    code, out, _ = run(capsys, "queues", "--json")
    listed = {q["queue"]: q for q in json.loads(out)}
    assert listed["system"]["paused"] is True and listed["system"]["consumers"] == 0

    code, out, _ = run(capsys, "queues", "resume", "system")
    assert (code, out) == (0, "queue system: resumed; 1 waiting job(s) published again\n")
    with pg_db() as session:
        job = session.get(Job, waiting.id)
        assert job is not None and job.published_at is not None
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [(e.action, e.actor_id) for e in events] == [
        ("queue_paused", None),
        ("queue_resumed", None),
    ]
    assert events[0].details["reason"] == "maintenance"
    assert str(events[0].details["by"]).startswith("cli:")
    code, out, _ = run(capsys, "queues", "resume", "system")
    assert (code, out) == (0, "queue system: not paused\n")


def test_an_unreachable_database_is_named_without_its_password(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "CONVEYOR_DATABASE_URL", "postgresql+psycopg://app:hunter2@127.0.0.1:1/conveyor"
    )
    get_settings.cache_clear()
    code, out, err = run(capsys, "users", "list")
    assert code == 1 and out == ""
    assert err.startswith("conveyor: cannot reach the database at ")
    assert "app:***@127.0.0.1:1/conveyor" in err and "hunter2" not in err
    assert err.count("\n") == 1 and "CONVEYOR_DATABASE_URL" in err


def test_an_unmigrated_database_says_to_upgrade_and_db_commands_say_what_they_did(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"conveyor_cli_{uuid.uuid4().hex[:8]}"
    admin = "host=127.0.0.1 user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        monkeypatch.setenv(
            "CONVEYOR_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        )
        get_settings.cache_clear()
        code, _, err = run(capsys, "users", "list")
        assert code == 1 and err.count("\n") == 1
        assert "no Conveyor tables" in err and "conveyor db upgrade" in err

        code, out, _ = run(capsys, "db", "current")
        assert code == 3 and out.startswith("none (behind")
        code, out, _ = run(capsys, "db", "upgrade", "0001")
        assert out == "database upgraded from revision none (empty) to 0001\n"
        code, _, err = run(capsys, "jobs", "list")
        assert "at revision 0001" in err and "conveyor db upgrade" in err
        code, out, _ = run(capsys, "db", "upgrade")
        assert code == 0 and out.startswith("database upgraded from revision 0001 to ")
        code, out, _ = run(capsys, "db", "upgrade")
        assert out.startswith("database already at revision") and "nothing to do" in out
        code, out, _ = run(capsys, "db", "current")
        assert code == 0 and out.endswith(" (head)\n")
        code, out, _ = run(capsys, "db", "history")
        assert out.splitlines()[0].startswith("0001  users, jobs and job events")
        assert out.splitlines()[-1].endswith("(head)")
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_bad_setting_is_named_by_its_variable(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONVEYOR_RETENTION_DAYS", "-3")
    get_settings.cache_clear()
    code, _, err = run(capsys, "users", "list")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("conveyor: bad setting CONVEYOR_RETENTION_DAYS: ")


def test_the_installed_command_runs_as_a_process(
    env: None, pg_db: sessionmaker[Session], tmp_path: Path
) -> None:
    create_user(pg_db, "alice@example.com")
    conveyor = Path(sys.executable).with_name("conveyor")
    environ = {k: v for k, v in os.environ.items() if k.startswith(("CONVEYOR_", "PATH"))}
    done = subprocess.run(
        [str(conveyor), "users", "list", "--json"],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert [u["email"] for u in json.loads(done.stdout)] == ["alice@example.com"]


@pytest.fixture
def fresh_database(env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty database of its own, which the CLI's settings name; dropped after."""
    name = f"conveyor_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        monkeypatch.setenv("CONVEYOR_DATABASE_URL", url)
        get_settings.cache_clear()
        yield name
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sql(name: str, statement: str) -> None:
    with psycopg.connect(f"{ADMIN[: ADMIN.index('dbname')]}dbname={name}") as connection:
        connection.execute(statement)


def test_a_database_ahead_of_this_code_is_accepted_with_a_warning(
    fresh_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rolling upgrade (or a rollback of the code) leaves the database on a revision this
    code does not know: the commands run on it, and none offers to upgrade it."""
    assert run(capsys, "db", "upgrade")[0] == 0
    _sql(fresh_database, "UPDATE alembic_version SET version_num = '9999'")

    code, out, err = run(capsys, "db", "current")
    assert (code, err) == (0, "")
    assert out == f"9999 (ahead of this code: the newest revision it knows is {head()})\n"

    code, out, err = run(capsys, "users", "list")
    assert code == 0 and err.splitlines()[1:] == ["no users"], err
    assert err.startswith("conveyor: warning: the database is at revision 9999, ahead of this")
    assert "db upgrade" not in err

    code, out, err = run(capsys, "db", "upgrade")
    assert (code, err) == (0, "") and out.count("\n") == 1
    assert "9999, ahead of this code" in out and "nothing to do" in out
    assert "db upgrade" not in out and "locate" not in out

    code, out, err = run(capsys, "release", "--exit")  # a rollback deploy goes through
    assert code == 0 and "Traceback" not in err
    assert "ahead of this code" in err
    assert _revision(fresh_database) == "9999"


def _revision(name: str) -> str:
    with psycopg.connect(f"{ADMIN[: ADMIN.index('dbname')]}dbname={name}") as connection:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row is not None
    return str(row[0])


def test_release_says_what_alembic_refused_in_one_line(
    fresh_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "db", "upgrade", "0002")[0] == 0
    _sql(fresh_database, "INSERT INTO alembic_version VALUES ('0001')")  # two heads: refused
    code, out, err = run(capsys, "release", "--exit")
    assert code == 1 and out == "" and "Traceback" not in err
    last = err.splitlines()[-1]  # after the log lines of `release`
    assert last.startswith("conveyor: Version table 'alembic_version' has more than one head")
    assert last.endswith("`conveyor db history` lists the revisions")


def _installed(argv: list[str], tmp_path: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    conveyor = Path(sys.executable).with_name("conveyor")
    env = {k: v for k, v in os.environ.items() if k.startswith(("CONVEYOR_", "PATH"))}
    return subprocess.run(
        [str(conveyor), *argv],
        env={**env, "CONVEYOR_DATA_DIR": str(tmp_path / "data"), **environ},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["web", "dev"])
def test_a_port_taken_or_a_host_unknown_is_one_line(
    env: None, tmp_path: Path, command: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _installed([command, "--host", "127.0.0.1", "--port", str(port)], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    ports = "--port (`make dev PORT=…`)" if command == "dev" else "--port or CONVEYOR_PORT"
    assert done.stderr.splitlines()[-1] == (
        f"conveyor: cannot listen on 127.0.0.1:{port}: address already in use; pick another "
        f"with {ports} (0: any free port)"
    )

    done = _installed([command, "--host", "256.1.1.1", "--port", "0"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        "conveyor: cannot listen on 256.1.1.1:0: '256.1.1.1' is not an address"
    )


@pytest.mark.parametrize("command", ["web", "dev"])
@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], command: str, port: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--port", port])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "give a port from 0 to 65535" in err


@pytest.mark.parametrize(
    "url", ["mysql://app:secret@db/conveyor", "oracle+nosuch://db/x", "nosuchdb://db/x"]
)
def test_a_database_url_without_its_driver_is_one_line(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", url)
    get_settings.cache_clear()
    for argv in (["users", "list"], ["db", "upgrade"], ["db", "current"], ["worker", "system"]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert err.startswith("conveyor: bad CONVEYOR_DATABASE_URL: no driver for ")
        assert "use postgresql+psycopg://" in err and "sqlite:///" in err
        assert "secret" not in err


def test_the_notifications_pool_with_smtp_needs_a_public_url_in_one_line(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CONVEYOR_PUBLIC_URL", raising=False)
    monkeypatch.setenv("CONVEYOR_EMAIL_TRANSPORT", "smtp")
    get_settings.cache_clear()
    code, out, err = run(capsys, "worker", "notifications")
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert "CONVEYOR_PUBLIC_URL is not set" in err


@pytest.mark.parametrize("alg", ["EdDSA", "RS256"])
def test_a_generated_key_signs_the_tokens_the_cli_issues(
    env: None,
    pg_db: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    alg: str,
) -> None:
    code, pem, err = run(capsys, "keys", "generate", "--alg", alg)
    assert code == 0 and pem.startswith("-----BEGIN PRIVATE KEY-----")
    kid = err.split()[1]
    assert err == f"kid {kid} ({alg})\n"
    (tmp_path / "jwt.pem").write_text(pem)
    monkeypatch.setenv("CONVEYOR_JWT_PRIVATE_KEYS", str(tmp_path / "jwt.pem"))
    monkeypatch.delenv("CONVEYOR_SECRET_KEY")
    get_settings.cache_clear()
    alice = create_user(pg_db, "alice@example.com")
    code, out, _ = run(capsys, "tokens", "issue", "alice@example.com")
    assert code == 0
    token = out.strip()
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": kid, "typ": "at+jwt"}
    claims = TokenVerifier(TokenConfig.of(get_settings())).verify(token)
    assert (claims.user_id, claims.amr) == (alice.id, ("cli",))
    assert claims.expires_at - claims.issued_at == dt.timedelta(minutes=15)


def test_an_unusable_key_file_is_named(
    env: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CONVEYOR_JWT_PRIVATE_KEYS", str(tmp_path / "missing.pem"))
    get_settings.cache_clear()
    code, _, err = run(capsys, "tokens", "issue", "alice@example.com")
    assert code == 1 and err.count("\n") == 1
    assert "missing.pem is not a readable PEM private key" in err


def test_the_derived_key_moved_to_a_file_keeps_its_tokens_good(
    env: None,
    pg_db: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice = create_user(pg_db, "alice@example.com")
    code, out, _ = run(capsys, "tokens", "issue", "alice@example.com")
    assert code == 0
    token = out.strip()
    code, pem, err = run(capsys, "keys", "export-derived")
    assert code == 0 and pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert err == f"kid {jwt.get_unverified_header(token)['kid']} (EdDSA)\n"
    (tmp_path / "jwt.pem").write_text(pem)
    monkeypatch.setenv("CONVEYOR_JWT_PRIVATE_KEYS", str(tmp_path / "jwt.pem"))
    monkeypatch.delenv("CONVEYOR_SECRET_KEY")
    get_settings.cache_clear()
    assert TokenVerifier(TokenConfig.of(get_settings())).verify(token).user_id == alice.id
    code, _, err = run(capsys, "keys", "export-derived")
    assert code == 1 and "CONVEYOR_SECRET_KEY is not set" in err


def test_a_missing_secret_key_says_how_to_make_one(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CONVEYOR_SECRET_KEY")
    get_settings.cache_clear()
    code, _, err = run(capsys, "tokens", "issue", "alice@example.com")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("conveyor: CONVEYOR_SECRET_KEY is not set")
    assert "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'" in err


def test_a_retry_while_the_broker_is_down_says_what_happens_to_the_job(
    env: None,
    monkeypatch: pytest.MonkeyPatch,
    pg_db: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice = create_user(pg_db, "alice@example.com")
    failed = _job(pg_db, alice, JobStatus.FAILED, attempts=1, finished_at=utcnow())
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "amqp://guest:guest@127.0.0.1:1/")
    get_settings.cache_clear()
    code, _, err = run(capsys, "jobs", "retry", str(failed.id))
    assert code == 0 and _status(pg_db, failed.id) == "queued"
    assert "retrying quietly" not in err and err.count("\n") == 1
    assert err.startswith("conveyor: warning: the broker is unreachable")
    assert "saved as queued" in err and "sweeper" in err and "does not retry" in err

    queued = _job(pg_db, alice, JobStatus.QUEUED)
    code, out, err = run(capsys, "jobs", "cancel", str(queued.id))  # needs no broker
    assert (code, err) == (0, "") and out == f"job {queued.id}: cancelled\n"


def test_a_bulk_retry_counts_the_jobs_of_unknown_types_once(
    env: None,
    monkeypatch: pytest.MonkeyPatch,
    pg_db: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI calls the bulk retry until no job is left; each call meets again the jobs of
    types this code does not know (older ids first), which must be counted once."""
    import conveyor.cli

    monkeypatch.setattr(conveyor.cli, "BULK_LIMIT", 1)
    alice = create_user(pg_db, "alice@example.com")
    unknown = [_job(pg_db, alice, JobStatus.FAILED, type="gone.away") for _ in range(2)]
    known = [_job(pg_db, alice, JobStatus.FAILED) for _ in range(3)]
    code, out, err = run(capsys, "jobs", "retry", "--status", "failed")
    assert code == 0 and out == "retried 3 job(s)\n"
    assert err == "left 2 job(s) of job types this code does not know\n"
    assert {_status(pg_db, j.id) for j in known} == {"queued"}
    assert {_status(pg_db, j.id) for j in unknown} == {"failed"}


def test_bounces_list_and_clear(
    env: None, pg_db: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    from conveyor.services import notifications

    notifications.record_bounce(pg_db, None, "email", "gone@example.com", "550 no such mailbox")
    code, out, _ = run(capsys, "bounces", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["CHANNEL", "ADDRESS", "REASON", "CREATED_AT", "ID"]
    assert lines[1].split()[:2] == ["email", "gone@example.com"]
    code, out, _ = run(capsys, "bounces", "list", "--json", "--address", "Gone@example.com")
    assert [b["reason"] for b in json.loads(out)] == ["550 no such mailbox"]
    assert run(capsys, "bounces", "clear", "GONE@example.com")[0] == 0
    assert run(capsys, "bounces", "list")[1:] == ("", "no bounced addresses\n")
    code, _, err = run(capsys, "bounces", "clear", "gone@example.com")
    assert (code, err) == (1, "conveyor: gone@example.com is not on the email bounce list\n")


def test_users_made_with_a_password_can_sign_in_and_have_it_replaced(
    env: None,
    pg_db: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long unusual passphrase\n"))
    assert run(capsys, "users", "create", "pw@example.com", "--password-stdin")[0] == 0
    with pg_db() as session:
        user = session.scalars(select(User).where(User.email == "pw@example.com")).one()
    assert user.email_verified_at is not None  # an admin made it
    assert user.password_hash and verify_password(user.password_hash, "a long unusual passphrase")

    monkeypatch.setattr("sys.stdin", io.StringIO("password\n"))
    code, _, err = run(capsys, "users", "password", "pw@example.com")
    assert code == 1 and "most common passwords" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("another fine passphrase\n"))
    assert run(capsys, "users", "password", "pw@example.com")[0] == 0
    with pg_db() as session:
        user = session.scalars(select(User).where(User.email == "pw@example.com")).one()
    assert user.tokens_valid_after is not None
    assert user.password_hash and verify_password(user.password_hash, "another fine passphrase")


def test_cli_user_changes_follow_the_apis_rules(
    env: None, pg_db: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    from conveyor.models import AuditEvent
    from conveyor.services import accounts, sessions
    from conveyor.services.audit import NOBODY

    settings = get_settings()
    ops = create_user(pg_db, "ops@example.com", Role.ADMIN)
    alice = create_user(pg_db, "alice@example.com")
    accounts.system_owner(pg_db)  # the auth pool's jobs have an owner: listed for no one
    with transaction(pg_db) as session:
        opened = sessions.start(
            session,
            TokenConfig.of(settings),
            sessions.Lifetimes.of(settings),
            session.get(User, alice.id),  # type: ignore[arg-type]
            amr=["pwd"],
            client=NOBODY,
        )

    assert run(capsys, "users", "deactivate", "alice@example.com")[0] == 0
    assert not sessions.is_open(pg_db, opened.session_id)
    assert run(capsys, "users", "activate", "alice@example.com")[0] == 0
    assert not sessions.is_open(pg_db, opened.session_id)  # not revived
    assert run(capsys, "users", "role", "alice@example.com", "admin")[0] == 0
    with pg_db() as session:
        assert session.get(User, alice.id).tokens_valid_after is not None  # type: ignore[union-attr]
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.subject_id == alice.id).order_by(AuditEvent.id)
        ).all()
    changes = [e for e in events if e.action != "login"]
    assert [e.action for e in changes] == ["user_disabled", "user_enabled", "role_changed"]
    assert {(e.actor_id, e.details.get("via")) for e in changes} == {(None, "cli")}

    assert run(capsys, "users", "role", "alice@example.com", "member")[0] == 0
    code, _, err = run(capsys, "users", "deactivate", "ops@example.com")
    assert code == 1 and "last active admin" in err
    with pg_db() as session:
        assert session.get(User, ops.id).active  # type: ignore[union-attr]

    code, out, _ = run(capsys, "users", "list", "--json")
    assert code == 0
    assert {u["email"] for u in json.loads(out)} == {"ops@example.com", "alice@example.com"}


def test_the_dev_admin_and_operator_made_users_are_verified(pg_db: sessionmaker[Session]) -> None:
    from conveyor.services.users import ensure_user

    admin = ensure_user(pg_db, "dev-admin@example.com", Role.ADMIN)
    assert admin.email_verified_at is not None
