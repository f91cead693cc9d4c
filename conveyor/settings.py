"""The one configuration object, read from CONVEYOR_* environment variables and `.env`."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from conveyor.egress import EgressPolicy
from conveyor.errors import ConfigurationError
from conveyor.security.oidc import ProviderConfig, parse_providers
from conveyor.security.throttle import Rule

#: How to make a CONVEYOR_SECRET_KEY, for the errors that say it is missing.
SECRET_KEY_HINT = (
    "generate one with python3 -c 'import secrets; print(secrets.token_urlsafe(48))' "
    "and set it in the environment or .env"
)


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
    redis_heartbeat_timeout_seconds: float = Field(
        10.0,
        ge=1.0,
        description="Redis broker: a worker process not heard from for this long is taken for "
        "dead, and the messages it had fetched go back to their queue.",
    )
    redis_maintenance_interval_seconds: float = Field(
        1.0,
        gt=0,
        description="Redis broker: how often each worker puts back the messages of dead workers "
        "(and sends its heartbeat).",
    )
    redis_url: str | None = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for job-status announcements and attempt limits; empty: in-process "
        "ones (one process).",
    )
    redis_prefix: str = Field("conveyor", description="Prefix of every Redis channel and key.")
    secret_key: SecretStr | None = Field(
        None,
        description="Secret from which cursor, unsubscribe-link, session-cookie and (without "
        "CONVEYOR_JWT_PRIVATE_KEYS) API token keys are derived. Required outside `conveyor dev`.",
    )
    jwt_private_keys: Annotated[tuple[Path, ...], NoDecode] = Field(
        (),
        description="Comma-separated paths of PEM private keys (Ed25519 or RSA of 2048 bits or "
        "more) that sign API tokens: the first signs, every one verifies; empty: an Ed25519 "
        "key derived from CONVEYOR_SECRET_KEY signs.",
    )
    jwt_public_keys: Annotated[tuple[Path, ...], NoDecode] = Field(
        (),
        description="Comma-separated paths of PEM public keys that only verify API tokens "
        "(a key about to sign, or a retired one whose tokens have not expired yet).",
    )
    jwt_issuer: str = Field("conveyor", description="`iss` claim of issued tokens, checked.")
    jwt_audience: str = Field("conveyor-api", description="`aud` claim of issued tokens, checked.")
    token_ttl_seconds: int = Field(
        15 * 60,
        gt=0,
        description="Lifetime of access tokens, those of `conveyor tokens issue` without `--days`.",
    )
    token_max_lifetime_seconds: int = Field(
        90 * 24 * 3600,
        gt=0,
        description="Longest token lifetime accepted (`exp` after `iat`, and after now); "
        "a longer-lived token is refused.",
    )
    session_idle_seconds: int = Field(
        14 * 24 * 3600,
        gt=0,
        description="A sign-in session ends when it goes unused this long (its refresh token, "
        "or a browser's session cookie).",
    )
    session_max_age_seconds: int = Field(
        30 * 24 * 3600,
        gt=0,
        description="A sign-in session ends this long after the sign-in, however often it is "
        "refreshed or used; a browser's session cookie lasts as long.",
    )
    mfa_required_roles: Annotated[frozenset[Literal["admin", "operator", "member"]], NoDecode] = (
        Field(
            frozenset({"admin"}),
            description="Roles that must sign in with a second factor (TOTP) to act as that "
            "role, comma-separated; until they do they act as members. Empty: none.",
        )
    )
    oidc_providers: Annotated[dict[str, ProviderConfig] | None, NoDecode] = Field(
        None,
        description="OpenID Connect providers users may log in with, as a JSON object: "
        '`{"name": {"issuer": "https://…", "client_id": "…", "client_secret": "…", '
        '"scopes": "openid email profile"}}`; names are 1 to 32 of a-z, 0-9 and -; no secret: '
        "a public client (PKCE alone). Needs `CONVEYOR_PUBLIC_URL` (the provider sends the "
        "browser back under it).",
    )
    host: str = Field("127.0.0.1", description="Address `conveyor web` listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port `conveyor web` listens on.")
    max_body_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest request body accepted (413 above)."
    )
    http_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a client has to send a request's headers, from its first byte "
        "(or from connecting); the connection is closed after it.",
    )
    http_body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Time a client has to send a request's body, from the end of its "
        "headers (408 after it).",
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
    max_include_page_size: int = Field(
        100,
        gt=0,
        description="Largest `limit` of `GET /v1/jobs` with `include` (payloads or results).",
    )
    max_response_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest body of a `GET /v1/jobs` page; a page that would pass it ends "
        "sooner, with a cursor to the rest.",
    )
    public_url: HttpUrl | None = Field(
        None,
        description="The API's URL as clients reach it (`https://jobs.example.com`), for the "
        "full URLs of `Link` headers; unset or empty: the request's scheme and `Host`.",
    )
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
        description="Runs of a job that may be cut short (its worker lost to a crash, kill or "
        "lease expiry, or its code reached by a database, broker or Redis failure) before it "
        "ends failed; counted apart from its retries.",
    )
    worker_drain_seconds: float = Field(
        3.0,
        ge=0,
        description="When a worker is told to stop, how long its running jobs may take to "
        "finish; those still running then are handed back (they run again, not counted as a "
        "failure or a lost worker). Keep it below the process manager's wait before SIGKILL.",
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
    retention_days: float = Field(
        30.0,
        ge=0,
        le=100 * 366,
        description="Finished jobs (succeeded, failed, cancelled) and their events are deleted "
        "this many days after they finished; 0 keeps them forever.",
    )
    retention_interval_seconds: float = Field(
        300.0,
        gt=0,
        description="How often a web process's sweeper deletes the jobs past "
        "CONVEYOR_RETENTION_DAYS (one process at a time, in batches).",
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
    outbound_allow_hosts: str | None = Field(
        None,
        description="Internal hosts outbound HTTP (`ctx.http`, webhooks, providers) may reach, "
        "comma-separated: host names, `*.domain`, addresses, networks (`10.0.0.0/8`); all "
        "other non-public addresses are refused.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="The secret each user's webhook signing key is derived from (HMAC-SHA256 "
        "of `webhook:<user id>`; `Conveyor-Signature`); required to send webhooks.",
    )
    webhook_previous_secret: SecretStr | None = Field(
        None,
        description="While rotating the webhook secret: the old secret, whose per-user keys "
        "sign every delivery too (a second `v1=`), until receivers have the new keys.",
    )
    sms_provider_url: HttpUrl | None = Field(
        None,
        description="URL the generic HTTP SMS provider is POSTed to; unset: the `log` "
        "provider (messages are logged, not sent).",
    )
    sms_provider_name: str = Field(
        "http", description="Name of the SMS provider, recorded on each delivery."
    )
    sms_provider_auth_header: SecretStr | None = Field(
        None,
        description="Header sent to the SMS provider to authenticate, as `Name: value` "
        "(`Authorization: Bearer …`).",
    )
    sms_provider_body: str = Field(
        '{"to": "$address", "text": "$text"}',
        description="JSON body sent to the SMS provider; a string `$field` is replaced by "
        "the message's field (address, text, subject, data, kind, delivery_id...).",
    )
    sms_provider_message_id_field: str = Field(
        "id",
        description="Where the SMS provider's answer holds its message id (a dotted path "
        "into its JSON: `id`, `messages.0.id`).",
    )
    push_provider_url: HttpUrl | None = Field(
        None,
        description="URL the generic HTTP push provider is POSTed to; unset: the `log` provider.",
    )
    push_provider_name: str = Field(
        "http", description="Name of the push provider, recorded on each delivery."
    )
    push_provider_auth_header: SecretStr | None = Field(
        None,
        description="Header sent to the push provider to authenticate, as `Name: value`.",
    )
    push_provider_body: str = Field(
        '{"token": "$address", "title": "$subject", "body": "$text", "data": "$data"}',
        description="JSON body sent to the push provider, with `$field` as for SMS.",
    )
    push_provider_message_id_field: str = Field(
        "id",
        description="Where the push provider's answer holds its message id (dotted path).",
    )
    worker_threads: int = Field(8, gt=0, description="Worker threads of `conveyor dev`.")
    data_dir: Path = Field(
        Path(".conveyor"), description="Where `conveyor dev` keeps its database and key."
    )
    worker_heartbeat_seconds: float = Field(
        5.0,
        gt=0,
        description="How often each worker process records itself in the `workers` table "
        "(pool, host, pid, jobs in hand), for `conveyor workers` and the metrics.",
    )
    worker_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="A worker process not heard from for this long is taken for dead: it is "
        "no longer listed, and its row is deleted.",
    )
    metrics_refresh_seconds: float = Field(
        10.0,
        gt=0,
        description="How often each web process reads the database-derived metrics (queue "
        "depths, oldest waiting job, live workers); `/metrics` serves the last reading.",
    )
    capacity_target_utilization: float = Field(
        0.75,
        gt=0,
        le=1,
        description="The share of a pool's threads the capacity signal "
        "(`conveyor_pool_desired_workers`) plans to keep busy with the jobs arriving.",
    )
    capacity_drain_seconds: float = Field(
        300.0,
        gt=0,
        description="How soon the capacity signal plans to clear a queue's backlog.",
    )
    capacity_max_workers: int = Field(
        20,
        ge=1,
        description="The most worker processes the capacity signal asks for, per pool.",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the worker pools' metrics servers listen on."
    )
    worker_metrics_ports: Annotated[dict[str, int] | None, NoDecode] = Field(
        {"system": 9191, "notifications": 9192, "auth": 9193},
        description="Port of each pool's metrics server, as `pool=port;pool=port` (`,` "
        "between entries works too when no pool's name has a comma) or a JSON object; a pool "
        "not named serves no metrics, and an empty value turns them all off.",
    )
    metrics_dir: Path | None = Field(
        None,
        description="Where worker processes keep their metrics files (Prometheus multiprocess "
        "mode); unset: a directory under the system's temporary directory.",
    )
    log_level: str = Field("INFO", description="Logging level.")
    log_format: Literal["text", "json"] = Field("text", description="`json` in production.")
    access_log: bool = Field(
        True, description="Log one line per HTTP request (method, route, status, duration)."
    )
    max_traceback_bytes: int = Field(
        16384,
        ge=1024,
        le=1024 * 1024,
        description="Longest traceback kept with a failed attempt's error (its end is kept, "
        "where the exception is raised).",
    )
    # --- notifications ---------------------------------------------------------------------
    email_transport: Literal["smtp", "outbox"] = Field(
        "smtp",
        description="How the notifications pool sends email: `smtp`, or `outbox` (each message "
        "written as a .eml file in `outbox_dir`; `conveyor dev` uses it).",
    )
    outbox_dir: Path | None = Field(
        None,
        description="Folder of the `outbox` email transport; unset: `outbox` under `data_dir`.",
    )
    smtp_host: str = Field("127.0.0.1", description="SMTP server of outgoing email.")
    smtp_port: int = Field(
        1025, ge=1, le=65535, description="Its port (1025: docker-compose's Mailpit)."
    )
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        "none",
        description="`starttls` (port 587), `tls` (implicit TLS, port 465) or `none`.",
    )
    smtp_username: str | None = Field(None, description="SMTP login; unset: no AUTH.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    smtp_timeout_seconds: float = Field(
        30.0, gt=0, description="Time limit of each SMTP connection and command."
    )
    mail_from: str = Field(
        "Conveyor <conveyor@localhost>", description="`From` of every notification email."
    )
    notification_templates_dir: Path | None = Field(
        None,
        description="A folder of notification kinds of your own (`<kind>/kind.json` and its "
        "templates), searched before the built-in ones.",
    )
    notification_template_max_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest notification template file, and largest rendered part.",
    )
    notification_rate_limits: Annotated[dict[str, str] | None, NoDecode] = Field(
        None,
        description="Most messages per provider, across the pool, as `provider=COUNT/UNIT` "
        "pairs (UNIT: s, m or h), such as `smtp=20/s,http=600/m`; unset: no limit.",
    )
    notification_max_recipients: int = Field(
        100, gt=0, description="Most recipients of one `POST /v1/notifications`."
    )
    notification_max_context_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest `context` of a notification, as JSON."
    )
    # --- accounts and sign-in --------------------------------------------------------------
    registration: Literal["open", "closed"] = Field(
        "open",
        description="`open`: anyone may create an account with `POST /v1/auth/register` (or "
        "a first OpenID Connect login); `closed`: only admins make accounts "
        "(`conveyor users create`).",
    )
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated addresses or CIDR networks of the reverse proxies in "
        "front of `conveyor web`: only from them is `X-Forwarded-For` believed (the client "
        "address of the audit log and the attempt limits); empty: none.",
    )
    login_account_rate: str = Field(
        "10/15m",
        description="Failed sign-ins (and wrong current passwords) per account, as "
        "LIMIT/WINDOW (unit s, m or h); past it, sign-ins to the account are refused (429, "
        "Retry-After) until old failures leave the window.",
    )
    login_ip_rate: str = Field(
        "100/15m",
        description="Sign-in attempts per client address, as LIMIT/WINDOW; second steps "
        "(POST /v1/auth/login/mfa) are counted apart, by the same rule.",
    )
    reset_rate: str = Field(
        "5/1h",
        description="Password reset requests per email address and per client address, as "
        "LIMIT/WINDOW; verification resends and registrations are each counted apart, by the "
        "same rule.",
    )
    mfa_rate: str = Field(
        "5/5m", description="Second-factor (TOTP or recovery code) attempts per account."
    )
    mfa_issuer: str = Field(
        "Conveyor",
        min_length=1,
        max_length=100,
        pattern=r"^[^:]+$",
        description="The issuer authenticator apps show beside a TOTP code (no colon).",
    )
    api_keys_max_per_user: int = Field(
        50, gt=0, description="Most API keys a user may hold at once (revoked ones not counted)."
    )

    @field_validator("mfa_required_roles", mode="before")
    @classmethod
    def _roles(cls, value: object) -> object:
        """`admin,operator`: comma-separated role names (empty: none)."""
        if not isinstance(value, str):
            return value
        return frozenset(name.strip() for name in value.split(",") if name.strip())

    @field_validator("jwt_private_keys", "jwt_public_keys", mode="before")
    @classmethod
    def _paths(cls, value: object) -> object:
        """`keys/new.pem,keys/old.pem`: comma-separated, blanks ignored."""
        if not isinstance(value, str):
            return value
        return tuple(Path(item.strip()) for item in value.split(",") if item.strip())

    @field_validator("worker_metrics_ports", mode="before")
    @classmethod
    def _pool_ports(cls, value: object) -> object:
        """`system=9191;reports,billing=9192` (a pool serving several queues is named with
        commas, so `;` separates entries; `,` does where no `;` is given), or a JSON object;
        each port in 1..65535."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return None
        if text.startswith("{"):
            return json.loads(text)
        ports: dict[str, object] = {}
        for item in text.split(";" if ";" in text else ","):
            if not item.strip():
                continue  # a trailing `;`
            pool, sep, port = item.rpartition("=")
            if not sep or not pool.strip():
                hint = "; separate entries with ';' when a pool's name has a comma" * (
                    "," in text and ";" not in text
                )
                raise ValueError(f"expected pool=port, got {item.strip()!r}{hint}")
            ports[pool.strip()] = port.strip()
        return ports

    @field_validator("notification_rate_limits", mode="before")
    @classmethod
    def _provider_limits(cls, value: object) -> object:
        """`smtp=20/s,http=600/m`, or a JSON object; each limit COUNT/s, /m or /h."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return None
        if text.startswith("{"):
            return json.loads(text)
        limits: dict[str, str] = {}
        for item in text.split(","):
            provider, sep, limit = item.partition("=")
            if not sep or not provider.strip():
                raise ValueError(f"expected provider=COUNT/UNIT, got {item.strip()!r}")
            limits[provider.strip()] = limit.strip()
        return limits

    @field_validator("notification_rate_limits")
    @classmethod
    def _valid_limits(cls, limits: dict[str, str] | None) -> dict[str, str] | None:
        for provider, limit in (limits or {}).items():
            if not re.fullmatch(r"\s*[1-9][0-9]*\s*/\s*[smh]\s*", limit):
                raise ValueError(f"limit of {provider!r} must be COUNT/s, COUNT/m or COUNT/h")
        return limits

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> object:
        """`10.0.0.1, 10.1.0.0/16`: addresses or networks, comma-separated (empty: none)."""
        if not isinstance(value, str):
            return value
        proxies = tuple(item.strip() for item in value.split(",") if item.strip())
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"{proxy!r} is not an IP address or CIDR network") from None
        return proxies

    @field_validator("login_account_rate", "login_ip_rate", "reset_rate", "mfa_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        try:
            Rule.parse(value)
        except ConfigurationError as exc:
            raise ValueError(exc.detail) from None
        return value

    @field_validator("worker_metrics_ports")
    @classmethod
    def _valid_ports(cls, ports: dict[str, int] | None) -> dict[str, int] | None:
        if ports is None:
            return None
        for pool, port in ports.items():
            if not 0 < port < 65536:
                raise ValueError(f"port of pool {pool!r} must be within 1..65535")
        taken = list(ports.values())
        if len(set(taken)) != len(taken):
            raise ValueError("two pools have the same metrics port")
        return ports

    @field_validator("oidc_providers", mode="before")
    @classmethod
    def _oidc_providers(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return parse_providers(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("outbound_allow_hosts")
    @classmethod
    def _allow_list(cls, value: str | None) -> str | None:
        if value is not None:
            EgressPolicy.parse(value.split(","))  # a bad entry is refused at start
        return value or None

    @field_validator("sms_provider_body", "push_provider_body")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            body = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("must be a JSON object")
        return value

    @field_validator("sms_provider_auth_header", "push_provider_auth_header")
    @classmethod
    def _header_line(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            name, sep, rest = value.get_secret_value().partition(":")
            if not sep or not name.strip() or not rest.strip() or " " in name.strip():
                raise ValueError("expected `Header-Name: value`")
        return value

    @field_validator(
        "sms_provider_url",
        "push_provider_url",
        "sms_provider_auth_header",
        "push_provider_auth_header",
        "webhook_secret",
        "webhook_previous_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_unset_too(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator(
        "public_url",
        "smtp_username",
        "smtp_password",
        "outbox_dir",
        "notification_templates_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("public_url")
    @classmethod
    def _base_url_only(cls, url: HttpUrl | None) -> HttpUrl | None:
        if url is not None and (url.query or url.fragment):
            raise ValueError("give the base URL only, without a ?query or #fragment")
        return url

    @model_validator(mode="after")
    def _oidc_needs_a_public_url(self) -> Settings:
        if self.oidc_providers and self.public_url is None:
            # The provider sends the browser back to a URL registered with it: ours, as the
            # browser reaches it, which a request's `Host` header cannot be trusted to say.
            raise ValueError("CONVEYOR_OIDC_PROVIDERS needs CONVEYOR_PUBLIC_URL")
        return self

    @model_validator(mode="after")
    def _heartbeats_fit_in_their_timeout(self) -> Settings:
        if self.redis_heartbeat_timeout_seconds < 3 * self.redis_maintenance_interval_seconds:
            # Each worker's maintenance is its heartbeat: a live worker must beat a few times
            # within the timeout, or the others take its messages for a dead worker's.
            raise ValueError(
                "redis_heartbeat_timeout_seconds must be at least 3 times "
                "redis_maintenance_interval_seconds"
            )
        return self

    @model_validator(mode="after")
    def _workers_beat_within_their_timeout(self) -> Settings:
        if self.worker_timeout_seconds < 2 * self.worker_heartbeat_seconds:
            raise ValueError(
                "CONVEYOR_WORKER_TIMEOUT_SECONDS must be at least 2 times "
                "CONVEYOR_WORKER_HEARTBEAT_SECONDS: a live worker would be taken for dead"
            )
        return self

    @model_validator(mode="after")
    def _issued_tokens_are_accepted(self) -> Settings:
        if self.token_ttl_seconds > self.token_max_lifetime_seconds:
            raise ValueError(
                "CONVEYOR_TOKEN_TTL_SECONDS is longer than CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS: "
                "the tokens it issues would be refused"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; only entry points call this."""
    return Settings()


#: Variables that local Procfile runners set in every process they start: honcho, overmind,
#: and foreman (`PS`). Platforms that run a Procfile (Heroku's `DYNO`) set none.
PROCFILE_RUNNER_VARIABLES = ("HONCHO_PROCESS_NAME", "OVERMIND_PROCESS_NAME", "PS")


def local_procfile_runner() -> str | None:
    """The variable (and its value) showing that a local Procfile runner started this
    process, as `NAME=value`; None if none did (a platform's release phase, a shell)."""
    for name in PROCFILE_RUNNER_VARIABLES:
        if value := os.environ.get(name):
            return f"{name}={value}"
    return None
