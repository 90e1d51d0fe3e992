"""The one settings object: defaults < config file (TOML) < GATEWAY_* env vars < CLI flags."""

import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from registry import check_url

ENV_PREFIX = "GATEWAY_"


def default_data_dir() -> Path:
    """Return the per-user data directory (XDG on Linux, Application Support on macOS)."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "llm-gateway"
    base = os.environ.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(base) / "llm-gateway"


class Settings(BaseModel):
    """Everything the gateway can be configured with; built once at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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

    upstream_max_connections: Annotated[int, Field(ge=1)] = 1000
    upstream_max_connections_per_worker: Annotated[int, Field(ge=0)] = 0
    upstream_connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    max_tries: Annotated[int, Field(ge=1, le=10)] = 3
    request_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    balancing: Literal["round_robin", "weighted", "least_outstanding"] = "round_robin"
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
    max_request_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    max_response_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    default_temperature: Annotated[float, Field(ge=0, le=2)] = 0.7

    registry_check_interval_s: Annotated[float, Field(gt=0)] = 5.0
    redis_connect_timeout_s: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        return check_url(value) if value else None


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the sources in order of precedence and validate once."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or _env_path(environ.get(ENV_PREFIX + "CONFIG"))
    if config_file is not None:
        with open(config_file, "rb") as handle:
            values.update(tomllib.load(handle))
    for name in Settings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    values.update({key: value for key, value in (cli or {}).items() if value is not None})
    return Settings.model_validate(values)


def _env_path(raw: str | None) -> Path | None:
    return Path(raw) if raw else None


__all__ = ["Settings", "ValidationError", "default_data_dir", "load_settings"]
