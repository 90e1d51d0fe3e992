"""The worker record: what an operator registers, validated once at the edge."""

import hashlib
import re
import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from registry.model_settings import ModelName, ModelRecord
from templates import TemplateError, WorkerPlan, compile_worker, presets
from templates.codecs.template import USAGE_FIELDS

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what HTTP forbids (tab is fine)


def worker_id(model_name: str, req_url_template: str) -> str:
    """Return the stable id of the worker identity (model_name, req_url_template)."""
    digest = hashlib.sha256(f"{model_name}\n{req_url_template}".encode()).hexdigest()
    return digest[:24]


def other_forms(model_name: str, req_url_template: str) -> dict[str, frozenset[str]]:
    """Return the ids `req_url_template` may also name, each with the presets it names it for.

    A preset worker is stored under its base URL; an operator may name it by one of its
    endpoint URLs (or with a trailing slash). The id is that worker's only when the stored
    record has one of the presets listed with it.
    """
    exact = worker_id(model_name, req_url_template)
    forms: dict[str, set[str]] = {}
    for preset, base in presets.bases(req_url_template).items():
        wid = worker_id(model_name, base)
        if wid != exact:
            forms.setdefault(wid, set()).add(preset)
    return {wid: frozenset(names) for wid, names in forms.items()}


class WorkerSpec(BaseModel):
    """A worker as an operator describes it (the seed's register body, plus timeout_s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    _plan: WorkerPlan | None = PrivateAttr(default=None)

    model_name: ModelName
    # Before req_url_template: a preset worker's URL is normalised by its preset's rules.
    preset: Annotated[str, Field(max_length=64)] | None = None
    req_url_template: Annotated[str, Field(min_length=1, max_length=4096)]
    req_type: Literal["POST", "GET"] = "POST"
    header: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Any] | None = None
    response_extract: Annotated[str, Field(max_length=1024)] = ""
    owner: Annotated[str, Field(max_length=200)] = ""
    is_stream: bool = False
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    upstream_model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    stream_format: Literal["sse", "ndjson"] | None = None
    stream_extract: Annotated[str, Field(max_length=1024)] = ""
    # Where a template worker's answer (or each chunk of its stream) says its token counts
    # ({"prompt_tokens": path, "completion_tokens": path, "cached_tokens": path}) and why it
    # stopped; left out, answers carry none.
    usage_extract: dict[str, Annotated[str, Field(min_length=1, max_length=1024)]] | None = None
    finish_reason_extract: Annotated[str, Field(max_length=1024)] = ""
    health_url: Annotated[str, Field(max_length=4096)] | None = None
    metrics_url: Annotated[str, Field(max_length=4096)] | None = None
    weight: Annotated[int, Field(ge=1, le=1000)] = 1
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    ttl_s: Annotated[float, Field(gt=0, le=86400)] | None = None

    @field_validator("model_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if value != value.strip() or _CONTROL.search(value):
            raise ValueError("model_name must not have surrounding spaces or control characters")
        return value

    @field_validator("req_url_template")
    @classmethod
    def _base_url(cls, value: str, info: ValidationInfo) -> str:
        # Any URL form of a preset worker (its base, an endpoint URL, trailing slashes) is
        # stored as the base URL, so every form is the same identity. An unknown preset is
        # reported by compiling.
        preset = info.data.get("preset")
        if preset is None or preset not in presets.all_presets():
            return value
        try:
            return presets.base_url(preset, value)
        except TemplateError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("req_type", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("header")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if "\r" in item or "\n" in item:
                raise ValueError(f"header {name!r} must not contain line breaks")
            if _HEADER_CONTROL.search(item):
                raise ValueError(f"header {name!r} must not contain control characters")
        return value

    @field_validator("usage_extract")
    @classmethod
    def _usage_fields(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        unknown = sorted(set(value or {}) - set(USAGE_FIELDS))
        if unknown:
            raise ValueError(
                f"usage_extract has {', '.join(unknown)}; its keys are " + ", ".join(USAGE_FIELDS)
            )
        return value

    @field_validator("health_url", "metrics_url")
    @classmethod
    def _absolute_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{info.field_name} must be an absolute http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _templates_compile(self) -> "WorkerSpec":
        try:
            self._plan = self._compile()
        except TemplateError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def compile(self) -> WorkerPlan:
        """Return the worker's compiled templates (compiled once, when it was validated)."""
        if self._plan is None:
            self._plan = self._compile()
        return self._plan

    def _compile(self) -> WorkerPlan:
        return compile_worker(
            url=self.req_url_template,
            req_type=self.req_type,
            header=self.header,
            body=self.body,
            response_extract=self.response_extract,
            preset=self.preset,
            is_stream=self.is_stream,
            stream_format=self.stream_format,
            stream_extract=self.stream_extract,
            model_name=self.served_model,
            usage_extract=self.usage_extract,
            finish_reason_extract=self.finish_reason_extract,
        )

    @property
    def served_model(self) -> str:
        """The model name the worker itself knows (`upstream_model`, else `model_name`)."""
        return self.upstream_model or self.model_name

    @property
    def worker_id(self) -> str:
        return worker_id(self.model_name, self.req_url_template)


class RegisterRequest(WorkerSpec):
    """The body of POST /api/server/register: a spec, whether it may replace one, and whether
    the worker is called once to check it before it is stored (not part of the record)."""

    replace: bool = False
    verify: bool = False

    def spec(self) -> WorkerSpec:
        # Already validated (and compiled): build without validating again.
        spec = WorkerSpec.model_construct(**self.model_dump(exclude={"replace", "verify"}))
        spec._plan = self._plan
        return spec


class WorkerRecord(WorkerSpec):
    """A registered worker as stored in Redis."""

    id: str
    registered_at: float = Field(default_factory=time.time)
    # The config file that declares the worker (None: registered through the API). The API
    # refuses to change or remove a worker a file manages.
    managed_by: str | None = None

    @classmethod
    def from_spec(
        cls,
        spec: WorkerSpec,
        *,
        managed_by: str | None = None,
        registered_at: float | None = None,
    ) -> "WorkerRecord":
        # `spec` is validated and compiled already: build without validating again.
        record = cls.model_construct(
            id=spec.worker_id,
            registered_at=time.time() if registered_at is None else registered_at,
            managed_by=managed_by,
            **spec.model_dump(),
        )
        record._plan = spec._plan
        return record

    def public(self) -> dict[str, Any]:
        """Return the record as a listing shows it: header values are write-only."""
        data = self.model_dump(exclude={"header"})
        data["header"] = {name: "***" for name in self.header}
        return data


class WorkerKey(BaseModel):
    """The identity of a worker (body of POST /api/server/offline)."""

    model_config = ConfigDict(extra="forbid")

    model_name: ModelName
    req_url_template: Annotated[str, Field(min_length=1, max_length=4096)]


class Load(BaseModel):
    """What a worker's own /metrics last said of its load (read by the probe loop)."""

    running: Annotated[int, Field(ge=0)] = 0  # requests it is working on
    waiting: Annotated[int, Field(ge=0)] = 0  # requests queued behind them
    kv_usage: Annotated[float, Field(ge=0, le=1)] | None = None  # KV cache in use, 0 to 1
    at: float = 0.0  # when it was read (time.time())


class Health(BaseModel):
    """A worker's state as the active health checker last saw it, shared by every process."""

    state: Literal["up", "down"]
    since: float
    reason: str = ""
    load: Load | None = None  # only while up, and only for workers that publish /metrics


class Change(BaseModel):
    """One change event: a worker put or deleted, its health, or a model's settings."""

    v: int
    op: Literal["put", "del", "health", "model", "model_del"]
    id: str  # the worker's id; the model's name for "model" and "model_del"
    record: WorkerRecord | None = None
    health: Health | None = None
    model: ModelRecord | None = None
