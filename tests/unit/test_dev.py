"""`conveyor dev`'s data directory: private to its user, the key file from its creation."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from conveyor.db import make_engine
from conveyor.dev import _started, embedded_settings
from conveyor.models.migrate import upgrade
from conveyor.notifications.channels import LINKS
from conveyor.notifications.unsubscribe import OptOut, UnsubscribeLinks
from tests import stack


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The common umask (022), under which files are made readable by everyone."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def start_dev(data: Path) -> None:
    """What `conveyor dev` does to its data directory at start: settings, migrations, and
    the database opened in WAL mode (which makes the -wal and -shm files)."""
    settings = embedded_settings(stack.test_settings(data_dir=data, secret_key=None))
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT count(*) FROM jobs"))
            assert (data / "conveyor.db-wal").exists() and (data / "conveyor.db-shm").exists()
            for name in ("conveyor.db", "conveyor.db-wal", "conveyor.db-shm"):
                assert mode(data / name) == 0o600, name
    finally:
        engine.dispose()


@pytest.mark.usefixtures("usual_umask")
def test_the_data_directory_and_its_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "project" / ".conveyor"
    start_dev(data)
    assert mode(data) == 0o700
    assert mode(data / "secret_key") == 0o600
    assert mode(data / "webhook_secret") == 0o600
    assert mode(data / "conveyor.db") == 0o600


@pytest.mark.usefixtures("usual_umask")
def test_a_data_directory_made_before_is_made_private(tmp_path: Path) -> None:
    data = tmp_path / ".conveyor"
    data.mkdir(mode=0o755)
    for name in ("secret_key", "conveyor.db", "conveyor.db-wal", "conveyor.db-shm"):
        (data / name).write_text("" if name != "secret_key" else "an-old-key")
        (data / name).chmod(0o644)
    settings = embedded_settings(stack.test_settings(data_dir=data, secret_key=None))
    assert mode(data) == 0o700
    for name in ("secret_key", "conveyor.db", "conveyor.db-wal", "conveyor.db-shm"):
        assert mode(data / name) == 0o600, name
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == "an-old-key"


@pytest.mark.usefixtures("usual_umask")
def test_the_key_file_is_private_from_its_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key file made readable and tightened afterwards is readable for a moment (or for
    # good, if the process stops between the two): no chmod may be needed.
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)
    data = tmp_path / ".conveyor"
    embedded_settings(stack.test_settings(data_dir=data, secret_key=None))
    assert mode(data / "secret_key") == 0o600
    assert len((data / "secret_key").read_text()) >= 48


def test_the_embedded_mode_signs_webhooks_with_a_key_it_keeps(tmp_path: Path) -> None:
    data = tmp_path / ".conveyor"
    first = embedded_settings(stack.test_settings(data_dir=data, webhook_secret=None))
    again = embedded_settings(stack.test_settings(data_dir=data, webhook_secret=None))
    assert first.webhook_secret is not None and again.webhook_secret is not None
    key = first.webhook_secret.get_secret_value()
    assert len(key) >= 48 and again.webhook_secret.get_secret_value() == key
    assert (data / "webhook_secret").read_text() == key
    given = embedded_settings(stack.test_settings(data_dir=data, webhook_secret="mine"))
    assert given.webhook_secret is not None and given.webhook_secret.get_secret_value() == "mine"


def test_with_port_0_unsubscribe_links_point_at_the_port_it_was_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = stack.test_settings(public_url=None, port=0)
    links = UnsubscribeLinks.of(settings)

    class Built:
        def resource(self, name: str) -> Any:
            assert name == LINKS
            return links

    _started("127.0.0.1", "tok", "cvl_x", Built())(43210)  # type: ignore[arg-type]
    url = links.url(OptOut("user:x", "welcome", "email"))
    assert url.startswith("http://127.0.0.1:43210/v1/unsubscribe?token=")
    out = capsys.readouterr().out
    assert "url: http://127.0.0.1:43210" in out
    assert "sign-in: http://127.0.0.1:43210/app/login/link?token=cvl_x" in out
