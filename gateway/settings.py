"""The one settings object: defaults < config file (TOML) < GATEWAY_* env vars < CLI flags."""

import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.declared import WorkersError, read_workers
from registry import Balancing, ModelSettings, Price, WorkerSpec, check_name, check_url

ENV_PREFIX = "GATEWAY_"
# prometheus_client's own switch for multiprocess mode; read here so nothing else reads it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_ALLOW_ENTRY = re.compile(r"^(\*\.)?[A-Za-z0-9_.:-]+(/\d{1,3})?$")


def _looks_like_ip(entry: str) -> bool:
    host = entry.partition("/")[0]
    return ":" in host or bool(re.fullmatch(r"[0-9.]+", host))


def default_data_dir() -> Path:
    """Return the per-user data directory (XDG on Linux, Application Support on macOS)."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "llm-gateway"
    base = os.environ.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(base) / "llm-gateway"


class Settings(BaseModel):
    """Everything the gateway can be configured with; built once at start."""

    # Inputs stay out of error messages: some settings are secrets.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8007
    redis_url: str | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL; unset starts an embedded server",
    )
    data_dir: Path = Field(default_factory=default_data_dir)
    processes: Annotated[int, Field(ge=1, le=256)] = 1
    key_prefix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = (
        "llmgw"
    )
    log_level: str = "INFO"

    upstream_max_connections: Annotated[int, Field(ge=1)] = 4096
    upstream_max_connections_per_worker: Annotated[int, Field(ge=0)] = 0
    upstream_connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    max_tries: Annotated[int, Field(ge=1, le=10)] = 3
    request_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    balancing: Balancing = "round_robin"
    # Per-model settings (docs/routing.md), a `[models.NAME]` table each in the config file;
    # those set through the admin API win over these.
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    panic_mode: bool = False
    queue_timeout_s: Annotated[float, Field(ge=0)] = 5.0
    max_queued_per_model: Annotated[int, Field(ge=0)] = 256

    eject_after_failures: Annotated[int, Field(ge=1)] = 3
    ejection_base_s: Annotated[float, Field(gt=0)] = 5.0
    ejection_max_s: Annotated[float, Field(gt=0)] = 300.0
    probe_interval_s: Annotated[float, Field(gt=0)] = 2.0
    probe_timeout_s: Annotated[float, Field(gt=0)] = 1.0
    probe_rise: Annotated[int, Field(ge=1)] = 2
    probe_fall: Annotated[int, Field(ge=1)] = 2
    probe_lease_s: Annotated[float, Field(gt=0)] = 5.0
    reap_interval_s: Annotated[float, Field(gt=0)] = 0.5
    # Load-aware balancing reads workers' /metrics in the probe loop (docs/routing.md).
    metrics_max_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    max_request_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    max_response_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    # What else a worker may send (docs/operations.md, "Limits on what workers send").
    max_response_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 64 * 1024
    max_response_headers: Annotated[int, Field(ge=8, le=10_000)] = 100
    max_stream_line_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    stream_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    extract_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    default_temperature: Annotated[float, Field(ge=0, le=2)] = 0.7

    registry_check_interval_s: Annotated[float, Field(gt=0)] = 5.0
    redis_connect_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    redis_max_connections: Annotated[int, Field(ge=4, le=10_000)] = 64

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        return check_url(value) if value else None

    # Access control (docs/operations.md).
    admin_token: Annotated[SecretStr, Field(min_length=16)] | None = None
    metrics_token: Annotated[SecretStr, Field(min_length=16)] | None = None
    require_api_keys: bool = False
    api_key_cache_ttl_s: Annotated[float, Field(ge=0, le=300)] = 5.0
    # While Redis is unreachable, a cached key answer past its TTL is kept this much longer.
    api_key_cache_grace_s: Annotated[float, Field(ge=0, le=3600)] = 600.0
    # How long a stored Responses-API response (and its conversation) is kept.
    responses_ttl_s: Annotated[float, Field(gt=0)] = 30 * 24 * 3600.0
    api_key_cache_size: Annotated[int, Field(ge=1)] = 10_000
    api_key_lease_s: Annotated[float, Field(gt=0)] = 900.0
    worker_allowlist: tuple[str, ...] = ()
    # Browser-borne requests (docs/operations.md): origins allowed to change state, and the
    # Host names accepted besides loopback ones when the gateway is open and bound to loopback.
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()

    # Limits on what clients send (aiohttp's HTTP parser; body size is max_request_bytes).
    max_request_line_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = 8190
    max_header_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = 8190
    max_headers: Annotated[int, Field(ge=8, le=10_000)] = 100

    # The Assistants API's state in Redis (docs/api.md#assistants).
    assistants_ttl_s: Annotated[float, Field(gt=0)] = 30 * 24 * 3600.0
    assistants_max_per_key: Annotated[int, Field(ge=1, le=100_000)] = 1000
    assistants_max_messages: Annotated[int, Field(ge=2, le=100_000)] = 1000
    assistants_max_message_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024
    assistants_max_thread_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024

    # Observability.
    access_log: Annotated[float, Field(ge=0, le=1)] = 0.0
    metrics_multiproc_dir: Path | None = None
    # Traces (gateway/tracing.py): OpenTelemetry spans over OTLP/HTTP, off by default.
    otel_enabled: bool = False
    otel_endpoint: str | None = None  # unset: the exporter's own default (localhost:4318)
    otel_service_name: Annotated[str, Field(min_length=1, max_length=200)] = "llm-gateway"

    # Usage accounting (docs/usage.md): records in Redis, prices of models' tokens.
    usage_accounting: bool = True
    usage_flush_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 500
    usage_flush_records: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    usage_max_groups: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    usage_minute_retention_h: Annotated[float, Field(gt=0, le=24 * 31)] = 48.0
    usage_hour_retention_d: Annotated[float, Field(gt=0, le=3660)] = 35.0
    usage_day_retention_d: Annotated[float, Field(gt=0, le=36600)] = 400.0
    # A `[prices.NAME]` table each in the config file; those set through the admin API win.
    prices: dict[str, Price] = Field(default_factory=dict)

    # The config file these settings were read from, and the workers it declares
    # ([[workers]], gateway/declared.py); neither comes from the environment.
    config_file: Path | None = None
    workers: tuple[WorkerSpec, ...] = Field(default=(), repr=False)  # headers hold secrets

    @field_validator("access_log", mode="before")
    @classmethod
    def _access_log_switch(cls, value: Any) -> Any:
        """Accept "off" / "on" (or booleans) as well as a sampling ratio."""
        if isinstance(value, bool):
            return 1.0 if value else 0.0
        if isinstance(value, str):
            word = value.strip().lower()
            if word in ("off", "false", "no"):
                return 0.0
            if word in ("on", "true", "yes"):
                return 1.0
        return value

    @field_validator("prices", mode="before")
    @classmethod
    def _prices_json(cls, value: Any) -> Any:
        """Accept a JSON object (an env var) as well as the config file's tables."""
        if isinstance(value, str):
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"prices must be a JSON object ({exc})") from None
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _models_json(cls, value: Any) -> Any:
        """Accept a JSON object (an env var) as well as the config file's tables."""
        if isinstance(value, str):
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"models must be a JSON object ({exc})") from None
        return value

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        for name, settings in value.items():
            try:
                check_name(name)
                settings.checked_for(name)
            except ValueError as exc:
                raise ValueError(f"models.{name}: {exc}") from None
        return value

    @field_validator("worker_allowlist", "allowed_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Accept a comma-separated string (an env var) as well as a list."""
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("worker_allowlist")
    @classmethod
    def _allowlist_entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if not _ALLOW_ENTRY.match(entry):
                raise ValueError(
                    f"{entry!r} is neither an IP address, a CIDR network (10.0.0.0/8) nor a "
                    "host name (models.internal, *.models.internal)"
                )
            if _looks_like_ip(entry):
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError as exc:
                    raise ValueError(f"{entry!r} is not a valid network: {exc}") from None
        return value

    @model_validator(mode="after")
    def _keys_need_admin(self) -> "Settings":
        if self.require_api_keys and self.admin_token is None:
            raise ValueError(
                "require_api_keys needs admin_token: without it anyone could create API keys"
            )
        return self


_FILE_ONLY = frozenset({"config_file", "workers"})


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the sources in order of precedence and validate once.

    Raise OSError (unreadable file), tomllib.TOMLDecodeError, WorkersError (the file's
    workers, each problem named) or ValidationError (the settings).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or _env_path(environ.get(ENV_PREFIX + "CONFIG"))
    if config_file is not None:
        with open(config_file, "rb") as handle:
            values.update(tomllib.load(handle))
        values["config_file"] = config_file.absolute()  # symlinks kept: the operator's name
        if "workers" in values:
            try:
                values["workers"] = read_workers(values["workers"], environ)
            except WorkersError as exc:
                raise WorkersError(exc.problems, str(config_file)) from None
    for name in Settings.model_fields:
        if name in _FILE_ONLY:
            continue
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    if "metrics_multiproc_dir" not in values and environ.get(MULTIPROC_ENV):
        values["metrics_multiproc_dir"] = environ[MULTIPROC_ENV]
    values.update({key: value for key, value in (cli or {}).items() if value is not None})
    return Settings.model_validate(values)


def _env_path(raw: str | None) -> Path | None:
    return Path(raw) if raw else None


__all__ = ["Settings", "ValidationError", "WorkersError", "default_data_dir", "load_settings"]
