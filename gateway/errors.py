"""Every error the gateway answers with, drawn as one tree, and the middleware that renders it.

    GatewayError(status, code, message)
    ├── BadRequest           400  malformed body (not JSON, not UTF-8, nested too deep)
    ├── Unauthorized         401  no credentials (admin token, API key) where one is needed
    ├── Forbidden            403  credentials given but not accepted
    ├── NotFound             404  no such route
    │   ├── UnknownModel     404  no worker registered for the model
    │   ├── UnknownWorker    404  no worker with that identity
    │   └── UnknownKey       404  no API key with that id
    ├── MethodNotAllowed     405
    ├── Conflict             409  worker already registered, or managed by a config file
    ├── PayloadTooLarge      413
    ├── UnsupportedMediaType 415  a body that is not JSON where only JSON is taken (admin routes)
    ├── InvalidRequest       422  well-formed but invalid (validation, bad template)
    │   └── WorkerNotAllowed 422  the worker's host is outside worker_allowlist
    ├── Overloaded           429  every worker of the model is at its max_concurrency
    ├── RateLimited          429  an API key is over its limits (with Retry-After)
    │   └── BudgetExceeded   429  an API key spent its money budget for the period
    ├── WorkerRateLimited    429  every worker tried said 429 (their Retry-After passed on)
    ├── WorkerRefused        4xx  a worker refused the client's request (400, 413, 422)
    │   └── ContextTooLong   400  a worker said the prompt is longer than its context window
    ├── UpstreamError        502  the worker answered badly (or could not be reached)
    ├── Unavailable          503
    │   ├── NoHealthyWorker  503  the model's pool has no worker to try
    │   └── StoreUnavailable 503  Redis is unreachable, writes cannot be made
    └── UpstreamTimeout      504  the worker did not answer in time

A class says its status; an instance may carry another one where the status is the
worker's (`WorkerRefused`) or aiohttp's. Registry errors (registry/errors.py, which knows
nothing of HTTP) are mapped to these by one table.

On OpenAI and Anthropic routes an invalid request is a 400, as those APIs answer it, not a
422; on Anthropic routes, no worker free or healthy is its 529 `overloaded_error`.

Handlers raise; `error_middleware` picks the body shape of the family of the route the request
matched (gateway/endpoints.py): the seed's `{"success": false, "msg"}`, OpenAI's
`{"error": {"message", "type", "code"}}`, Anthropic's `{"type": "error", "error": {"type",
"message"}}` or Ollama's `{"error": "..."}`, and leaves the error
on the request (`ERROR`) for the access log.
"""

import difflib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar

import orjson
from aiohttp import web
from pydantic import ValidationError

import registry
from gateway.endpoints import CATALOGUE, Endpoint

log = logging.getLogger(__name__)


class GatewayError(Exception):
    status: int = 500
    code: ClassVar[str] = "internal_error"
    openai_type: ClassVar[str] = "server_error"

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if status is not None:
            self.status = status


class BadRequest(GatewayError):
    status, code, openai_type = 400, "bad_request", "invalid_request_error"


class Unauthorized(GatewayError):
    status, code, openai_type = 401, "unauthorized", "authentication_error"


class Forbidden(GatewayError):
    status, code, openai_type = 403, "forbidden", "permission_error"


class NotFound(GatewayError):
    status, code, openai_type = 404, "not_found", "invalid_request_error"


class UnknownModel(NotFound):
    code = "model_not_found"


class UnknownWorker(NotFound):
    code = "worker_not_found"


class UnknownKey(NotFound):
    code = "api_key_not_found"


class MethodNotAllowed(GatewayError):
    status, code, openai_type = 405, "method_not_allowed", "invalid_request_error"


class Conflict(GatewayError):
    status, code, openai_type = 409, "conflict", "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status, code, openai_type = 413, "payload_too_large", "invalid_request_error"


class UnsupportedMediaType(GatewayError):
    status, code, openai_type = 415, "unsupported_media_type", "invalid_request_error"


class InvalidRequest(GatewayError):
    status, code, openai_type = 422, "invalid_request", "invalid_request_error"


class WorkerNotAllowed(InvalidRequest):
    code = "worker_not_allowed"


class Overloaded(GatewayError):
    status, code, openai_type = 429, "workers_busy", "rate_limit_error"


class RateLimited(GatewayError):
    status, code, openai_type = 429, "rate_limited", "rate_limit_error"


class BudgetExceeded(RateLimited):
    """429, not 402: what OpenAI answers for a spent quota (`insufficient_quota`), which every
    client already handles; 402 is reserved in HTTP and no SDK knows it."""

    code, openai_type = "budget_exceeded", "insufficient_quota"


class WorkerRateLimited(GatewayError):
    status, code, openai_type = 429, "worker_rate_limited", "rate_limit_error"


class WorkerRefused(GatewayError):
    """A worker refused the client's request as the client's fault; its status is passed on."""

    code, openai_type = "invalid_request", "invalid_request_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status=status)


class ContextTooLong(WorkerRefused):
    """The worker said the prompt does not fit its context window (a fallback trigger)."""

    code = "context_length_exceeded"  # OpenAI's own code for it

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class UpstreamError(GatewayError):
    status, code, openai_type = 502, "upstream_error", "api_error"


class Unavailable(GatewayError):
    status, code, openai_type = 503, "unavailable", "api_error"


class NoHealthyWorker(Unavailable):
    code = "no_healthy_worker"


class StoreUnavailable(Unavailable):
    code = "store_unavailable"


class UpstreamTimeout(GatewayError):
    status, code, openai_type = 504, "upstream_timeout", "api_error"


# How many registered models a 404 for an unknown one names.
SUGGESTED_MODELS = 10


def unknown_model(model: str, known: Sequence[str], *, lead: str = "") -> UnknownModel:
    """The 404 for `model`, naming the models that have workers, the closest ones first.

    `lead` replaces the opening words (a protocol's own phrasing of "not found").
    """
    shown = model if len(model) <= 100 else model[:100] + "..."
    lead = lead or f"no worker is registered for model {shown!r}"
    if not known:
        return UnknownModel(
            f"{lead}, nor for any other model yet; register one with POST /api/server/register"
        )
    close = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
    if not close:  # a different case or a version suffix is what people get wrong most
        folded = model.casefold()
        close = [name for name in known if folded in name.casefold()][:3]
    named = close + [name for name in known if name not in close]
    listed = ", ".join(repr(name) for name in named[:SUGGESTED_MODELS])
    if len(named) > SUGGESTED_MODELS:
        listed += f" and {len(named) - SUGGESTED_MODELS} more"
    hint = f"did you mean {close[0]!r}? " if close else ""
    return UnknownModel(
        f"{lead}; {hint}registered models: {listed} (GET /v1/models or /api/tags lists them all)"
    )


def invalid(exc: ValidationError, what: str) -> GatewayError:
    """Turn a pydantic error into a 400 (not JSON) or 422 (wrong fields) naming each problem."""
    errors = exc.errors(include_url=False)
    if any(err["type"] == "json_invalid" for err in errors):
        detail = errors[0]["msg"]
        return BadRequest(f"{what} is not valid JSON ({detail}); send a JSON object")
    if any(err["type"] in ("model_type", "model_attributes_type") for err in errors):
        return InvalidRequest(f"{what} must be a JSON object")
    problems = []
    for err in errors[:10]:
        where = ".".join(str(part) for part in err["loc"]) or "body"
        message = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return InvalidRequest(f"invalid {what}: " + "; ".join(problems))


_REGISTRY: dict[type[registry.RegistryError], type[GatewayError]] = {
    registry.DuplicateWorker: Conflict,
    registry.ManagedWorker: Conflict,
    registry.UnknownWorker: UnknownWorker,
    registry.UnknownApiKey: UnknownKey,
    registry.UnknownModelSettings: UnknownModel,
    registry.StoreUnavailable: StoreUnavailable,
    registry.NotStored: NotFound,
    registry.ThreadBusy: Conflict,
    registry.RunChanged: Conflict,
    registry.StorageFull: Conflict,
    registry.MessageTooLarge: PayloadTooLarge,
    registry.UnknownCursor: InvalidRequest,
}


def _from_registry(exc: registry.RegistryError) -> GatewayError:
    cls = next((c for kind, c in _REGISTRY.items() if isinstance(exc, kind)), GatewayError)
    headers = {"Retry-After": "1"} if cls is StoreUnavailable else None
    return cls(str(exc), headers=headers)


_HTTP = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def _from_http(exc: web.HTTPException, request: web.Request) -> GatewayError:
    cls = _HTTP.get(exc.status)
    if exc.status == 404:
        return NotFound(f"no route {request.method} {request.path}; see the README for the API")
    if exc.status == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
    if exc.status == 413:
        return PayloadTooLarge(f"request body is larger than the limit: {exc.text}")
    if cls is None:
        return GatewayError(exc.text or exc.reason, status=exc.status)
    return cls(exc.text or exc.reason)


def family(request: web.Request) -> str:
    """Name the error shape of `request`: "openai", "anthropic", "ollama" or "seed"."""
    catalogue = request.app.get(CATALOGUE)
    return shape_of(catalogue.find(request) if catalogue is not None else None, request.path)


def shape_of(endpoint: Endpoint | None, path: str) -> str:
    """Name the error shape of a route: its family's, or for no route the one its path suggests."""
    if endpoint is not None:
        return endpoint.family if endpoint.family in ("openai", "anthropic", "ollama") else "seed"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/") and not path.startswith(("/api/server/", "/api/v1/")):
        return "ollama"
    return "seed"


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    501: "invalid_request_error",
    529: "overloaded_error",
}


def render(request: web.Request, err: GatewayError) -> web.Response:
    """Build the error response in the shape of the route family `request` belongs to."""
    kind = family(request)
    body: object
    status = err.status
    if kind == "openai":
        body = {"error": {"message": err.message, "type": err.openai_type, "code": err.code}}
        if status == 422:
            status = 400  # what OpenAI answers for an invalid request, and its SDKs expect
    elif kind == "anthropic":
        if status == 422:
            status = 400
        elif isinstance(err, Overloaded | NoHealthyWorker):
            status = 529  # Anthropic's "overloaded", which its SDKs retry
        kind_name = _ANTHROPIC_TYPES.get(status, "api_error")
        body = {"type": "error", "error": {"type": kind_name, "message": err.message}}
    elif kind == "ollama":
        body = {"error": err.message}
    else:
        body = {"success": False, "msg": err.message, "code": err.code}
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=err.headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ERROR = web.RequestKey("error", GatewayError)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as err:
        error = err
    except registry.RegistryError as exc:
        error = _from_registry(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _from_http(exc, request)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        error = GatewayError("internal gateway error; see the gateway's log")
    request[ERROR] = error
    return render(request, error)
