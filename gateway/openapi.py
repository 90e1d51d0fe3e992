"""The OpenAPI 3.1 document of every route, built from the catalogue and its pydantic models.

Request bodies are the very models the handlers validate with, so the document cannot drift
from what the gateway accepts. Security is declared only where this gateway's settings
actually require credentials.
"""

import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.endpoints import Catalogue, Endpoint
from gateway.errors import shape_of
from gateway.settings import Settings

OPENAPI = web.AppKey("openapi", bytes)

_PATH_PARAM = re.compile(r"\{(\w+)\}")
_STREAM_TYPES = {"openai": "text/event-stream", "ollama": "application/x-ndjson"}


class SeedError(BaseModel):
    """An error on a seed or registry route."""

    success: Literal[False]
    msg: str
    code: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class OpenAIError(BaseModel):
    """An error on a /v1 route."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """An error on an Anthropic route."""

    type: Literal["error"]
    error: AnthropicErrorDetail


class OllamaError(BaseModel):
    """An error on an Ollama route."""

    error: str


_ERRORS: dict[str, type[BaseModel]] = {
    "seed": SeedError,
    "openai": OpenAIError,
    "anthropic": AnthropicError,
    "ollama": OllamaError,
}
_SECURITY = {
    "admin": ("adminToken", "admin_token"),
    "inference": ("apiKey", "an API key made with POST /api/server/keys"),
    "metrics": ("metricsToken", "metrics_token"),
}


def build(catalogue: Catalogue, settings: Settings) -> dict[str, Any]:
    """Return the OpenAPI document of every endpoint in `catalogue`."""
    endpoints = sorted(catalogue, key=lambda e: (e.path, e.method))
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "validation") for m in _models(endpoints, "body")
    ]
    wanted += [(m, "serialization") for m in _models(endpoints, "answer")]
    wanted += [(m, "serialization") for m in _ERRORS.values()]
    refs, top = models_json_schema(wanted, ref_template="#/components/schemas/{model}")
    required = {
        "admin": settings.admin_token is not None,
        "inference": settings.require_api_keys,
        "metrics": settings.metrics_token is not None,
    }
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation = _operation(endpoint, refs, required.get(endpoint.access, False))
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    schemes = {
        name: {"type": "http", "scheme": "bearer", "description": what}
        for access, (name, what) in _SECURITY.items()
        if required[access]
    }
    components: dict[str, Any] = {"schemas": top.get("$defs", {})}
    if schemes:
        components["securitySchemes"] = schemes
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm-gateway",
            "version": _version(),
            "description": "One endpoint in front of many model servers: the registry "
            "(seed) API, the seed inference route, and OpenAI- and Ollama-compatible APIs.",
        },
        "paths": paths,
        "components": components,
    }


def document(catalogue: Catalogue, settings: Settings) -> bytes:
    """Return the document serialised once, as /openapi.json serves it."""
    return orjson.dumps(build(catalogue, settings))


def _models(endpoints: list[Endpoint], field: str) -> list[type[BaseModel]]:
    seen: dict[type[BaseModel], None] = {}
    for endpoint in endpoints:
        model = getattr(endpoint, field)
        if model is not None:
            seen[model] = None
    return list(seen)


def _operation(
    endpoint: Endpoint,
    refs: Mapping[tuple[Any, JsonSchemaMode], Any],
    secured: bool,
) -> dict[str, Any]:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", endpoint.path).strip("_")
    answer: dict[str, Any] = {"type": "object"}
    if endpoint.answer is not None:
        answer = refs[(endpoint.answer, "serialization")]
    if endpoint.media_type != "application/json":
        answer = {"type": "string"}
    content: dict[str, Any] = {endpoint.media_type: {"schema": answer}}
    stream_type = _STREAM_TYPES.get(endpoint.family)
    if endpoint.streams and stream_type is not None:
        content[stream_type] = {"schema": {"type": "string"}}
    error = {
        "description": "an error, in the shape of the route family",
        "content": {
            "application/json": {
                "schema": refs[(_ERRORS[shape_of(endpoint, endpoint.path)], "serialization")]
            }
        },
    }
    operation: dict[str, Any] = {
        "operationId": f"{endpoint.method.lower()}_{slug}",
        "summary": endpoint.summary,
        "tags": [endpoint.family],
        "responses": {
            "200": {"description": "success", "content": content},
            "4XX": error,
            "5XX": error,
        },
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(endpoint.path)
    ]
    if params:
        operation["parameters"] = params
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(endpoint.body, "validation")]}},
        }
    if secured:
        operation["security"] = [{_SECURITY[endpoint.access][0]: []}]
    return operation


def _version() -> str:
    try:
        return metadata.version("llm-gateway")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"
