"""Settings: CONVEYOR_* environment variables, defaults, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from conveyor.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CONVEYOR_* variable of the test run leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("CONVEYOR_"):
            monkeypatch.delenv(name)


def load() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_defaults_target_postgresql_rabbitmq_and_redis() -> None:
    settings = load()
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.broker_url.startswith("amqp://")
    assert settings.redis_url is not None and settings.redis_url.startswith("redis://")
    assert settings.secret_key is None
    assert settings.port == 8000
    assert settings.host == "127.0.0.1"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.log_format == "text"
    assert settings.data_dir == Path(".conveyor")
    assert settings.max_worker_losses == 2


def test_values_come_from_conveyor_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "sqlite:///tmp/x.db")
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "stub://")
    monkeypatch.setenv("CONVEYOR_PORT", "9123")
    monkeypatch.setenv("CONVEYOR_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("CONVEYOR_LOG_FORMAT", "json")
    monkeypatch.setenv("CONVEYOR_DATA_DIR", "/var/lib/conveyor")
    settings = load()
    assert settings.database_url == "sqlite:///tmp/x.db"
    assert settings.broker_url == "stub://"
    assert settings.port == 9123
    assert settings.lease_seconds == 2.5
    assert settings.log_format == "json"
    assert settings.data_dir == Path("/var/lib/conveyor")


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///elsewhere.db")
    settings = load()
    assert settings.port == 8000
    assert settings.database_url.startswith("postgresql")


def test_the_secret_key_is_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_SECRET_KEY", "very-secret-signing-key")
    settings = load()
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == "very-secret-signing-key"
    assert "very-secret-signing-key" not in repr(settings)
    assert "very-secret-signing-key" not in str(settings.model_dump())


def test_an_empty_redis_url_means_in_process_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "")
    assert not load().redis_url


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_PORT", "9123")
    assert Settings(_env_file=None, port=7000).port == 7000  # type: ignore[call-arg]


def test_an_env_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("CONVEYOR_PORT=8123\nCONVEYOR_BROKER_URL=stub://\nUNRELATED=1\n")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.port == 8123
    assert settings.broker_url == "stub://"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONVEYOR_PORT", "-1"),
        ("CONVEYOR_PORT", "65536"),
        ("CONVEYOR_PORT", "http"),
        ("CONVEYOR_MAX_BODY_BYTES", "0"),
        ("CONVEYOR_LEASE_SECONDS", "0"),
        ("CONVEYOR_MAX_WAIT_SECONDS", "-5"),
        ("CONVEYOR_DEFAULT_PAGE_SIZE", "0"),
        ("CONVEYOR_TOKEN_TTL_SECONDS", "0"),
        ("CONVEYOR_PUBLISH_GRACE_SECONDS", "-0.5"),
        ("CONVEYOR_WORKER_THREADS", "0"),
        ("CONVEYOR_MAX_WORKER_LOSSES", "-1"),
        ("CONVEYOR_LOG_FORMAT", "xml"),
        ("CONVEYOR_LOGIN_ACCOUNT_RATE", "10/15d"),
        ("CONVEYOR_LOGIN_IP_RATE", "0/15m"),
        ("CONVEYOR_RESET_RATE", "5 per hour"),
        ("CONVEYOR_MFA_RATE", "5/0m"),
    ],
)
def test_invalid_values_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        load()
    assert caught.value.errors()[0]["loc"] == (name.removeprefix("CONVEYOR_").lower(),)


def test_settings_are_frozen() -> None:
    settings = load()
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_zero_publish_grace_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_PUBLISH_GRACE_SECONDS", "0")
    assert load().publish_grace_seconds == 0


def test_a_rabbitmq_broker_gives_up_on_a_blocked_connection() -> None:
    from conveyor.broker import BLOCKED_TIMEOUT_SECONDS, build_broker

    default = build_broker("amqp://guest:guest@127.0.0.1:5672/%2F")
    assert default.parameters.blocked_connection_timeout == BLOCKED_TIMEOUT_SECONDS  # type: ignore[attr-defined]
    chosen = build_broker("amqp://guest:guest@127.0.0.1:5672/%2F?blocked_connection_timeout=5")
    assert chosen.parameters.blocked_connection_timeout == 5  # type: ignore[attr-defined]


def test_an_empty_public_url_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_PUBLIC_URL", "")
    assert load().public_url is None
    monkeypatch.setenv("CONVEYOR_PUBLIC_URL", "https://jobs.example.com/conveyor")
    assert str(load().public_url) == "https://jobs.example.com/conveyor"


@pytest.mark.parametrize(
    "url", ["ftp://jobs.example.com", "jobs.example.com", "https://x/?a=1", "https://x/#top"]
)
def test_a_public_url_is_an_http_base_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("CONVEYOR_PUBLIC_URL", url)
    with pytest.raises(ValidationError, match="public_url"):
        load()


def test_oidc_providers_need_a_public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = '{"corp": {"issuer": "https://login.example.com", "client_id": "conveyor"}}'
    monkeypatch.setenv("CONVEYOR_OIDC_PROVIDERS", provider)
    with pytest.raises(ValidationError, match="needs CONVEYOR_PUBLIC_URL"):
        load()
    monkeypatch.setenv("CONVEYOR_PUBLIC_URL", "https://jobs.example.com")
    assert list(load().oidc_providers or {}) == ["corp"]


def test_the_response_bound_leaves_room_for_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_MAX_RESPONSE_BYTES", "1000")
    with pytest.raises(ValidationError, match="max_response_bytes"):
        load()
