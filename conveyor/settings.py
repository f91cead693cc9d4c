"""The one configuration object, read from CONVEYOR_* environment variables and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting Conveyor reads. Defaults target the services of docker-compose.yml."""

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/conveyor",
        description="SQLAlchemy URL of the database: postgresql+psycopg://… or sqlite:///…",
    )
    broker_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        description="Message broker: amqp://… (RabbitMQ), redis://… or stub:// (in-process).",
    )
    broker_namespace: str = Field(
        "conveyor", description="Key prefix of the Redis broker (ignored by RabbitMQ)."
    )
    redis_url: str | None = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for job-status announcements; empty: in-process ones (one process).",
    )
    redis_prefix: str = Field("conveyor", description="Prefix of every Redis channel and key.")
    secret_key: SecretStr | None = Field(
        None, description="HMAC key that signs API tokens (HS256). Required outside `conveyor dev`."
    )
    jwt_issuer: str = Field("conveyor", description="`iss` claim of issued tokens, checked.")
    jwt_audience: str = Field("conveyor-api", description="`aud` claim of issued tokens, checked.")
    token_ttl_seconds: int = Field(
        30 * 24 * 3600, gt=0, description="Lifetime of tokens from `conveyor tokens issue`."
    )
    host: str = Field("127.0.0.1", description="Address `conveyor web` listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port `conveyor web` listens on.")
    max_body_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest request body accepted (413 above)."
    )
    max_wait_seconds: float = Field(
        60.0, gt=0, description="Upper bound of `?wait=` and `Prefer: wait=`."
    )
    max_delay_seconds: float = Field(
        366 * 24 * 3600.0,
        gt=0,
        le=10 * 366 * 24 * 3600.0,
        description="Furthest ahead a job may be scheduled (`run_at`, `delay_seconds`).",
    )
    default_page_size: int = Field(50, gt=0, description="Jobs per page of `GET /v1/jobs`.")
    max_page_size: int = Field(500, gt=0, description="Largest `limit` of `GET /v1/jobs`.")
    max_streams_per_user: int = Field(
        20,
        gt=0,
        description="Event streams one user may hold open at once, per web process (429 above).",
    )
    db_pool_size: int = Field(10, gt=0, description="Database connections per process.")
    db_threads: int = Field(8, gt=0, description="Threads the web process runs database calls on.")
    publish_threads: int = Field(
        4, gt=0, description="Threads (each with its own broker connection) that publish jobs."
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="A running job's lease; renewed while its worker lives."
    )
    max_worker_losses: int = Field(
        2,
        ge=0,
        description="Times a job may lose its worker (crash, kill, lease expiry) before it "
        "ends failed; counted apart from its retries.",
    )
    sweep_interval_seconds: float = Field(
        1.0, gt=0, description="How often the sweeper looks for unpublished, due and stalled jobs."
    )
    publish_grace_seconds: float = Field(
        3.0, ge=0, description="Age after which a committed but unpublished job is swept."
    )
    requeue_after_seconds: float = Field(
        900.0,
        gt=0,
        description="A queued or retrying job whose message was published this long ago "
        "and never started is published again (a lost message).",
    )
    http_timeout_seconds: float = Field(
        30.0, gt=0, description="Total time limit of an outbound request made with `ctx.http`."
    )
    http_connect_timeout_seconds: float = Field(
        10.0, gt=0, description="Time limit to connect, for an outbound request (`ctx.http`)."
    )
    http_max_response_bytes: int = Field(
        10 * 1024 * 1024,
        gt=0,
        description="Largest response body `ctx.http` reads; a larger one is an error.",
    )
    worker_threads: int = Field(8, gt=0, description="Worker threads of `conveyor dev`.")
    data_dir: Path = Field(
        Path(".conveyor"), description="Where `conveyor dev` keeps its database and key."
    )
    log_level: str = Field("INFO", description="Logging level.")
    log_format: Literal["text", "json"] = Field("text", description="`json` in production.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; only entry points call this."""
    return Settings()
