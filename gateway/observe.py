"""Per-request observation: the request id, request metrics and the JSON access log.

`observe_middleware` is the outermost middleware. It takes the client's `X-Request-ID` when
it is a safe token (else makes one), keeps it on the request under `REQUEST_ID` for handlers
and worker calls, and returns it on the response. Handlers note what they learn (model,
worker, tries) on the request's `Trace`; when the answer is complete the middleware records
the request's metrics and, when sampled, one JSON access-log line on the `gateway.access`
logger.
"""

import logging
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from gateway.endpoints import Handler
from gateway.errors import ERROR
from gateway.router import Router
from gateway.state import CATALOGUE, LIVE, METRICS, ROUTER, SETTINGS

access_log = logging.getLogger("gateway.access")

HEADER = "X-Request-ID"
MODEL_HEADER = "X-Gateway-Model"  # the model that answered (an alias's choice, a fallback)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:+/=@-]{1,128}$")
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_CLIENT_GONE = 499  # nginx's status for a client that closed the connection before the answer


@dataclass(slots=True)
class Trace:
    """What a request learned on its way, for its metrics and its access-log line."""

    request_id: str
    model: str | None = None  # as the client asked
    served_model: str | None = None  # the model that answered
    worker: str | None = None  # the worker's label (scheme://host:port/path)
    tries: int | None = None
    upstream_s: float | None = None
    key_id: str | None = None  # the API key's id (never the key)
    metered: bool = False  # the key has token limits or a budget: charged when the request ends
    # What the answer used (gateway/accounting.py), summed if a request had several.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    cost: float = 0.0
    span: Any = None  # the request's RequestSpan, when OpenTelemetry is on (gateway/tracing.py)


REQUEST_ID = web.RequestKey("request_id", str)
TRACE = web.RequestKey("trace", Trace)


def request_id_from(header: str | None) -> str:
    """Return the client's request id when it is a safe token, else a new one."""
    if header is not None and _SAFE_ID.match(header):
        return header
    return os.urandom(16).hex()  # as random as uuid4().hex, at a fifth of its cost


def note_model(request: web.Request, model: str) -> None:
    """Record the model a request asked for (labels use it only if it is registered)."""
    trace = request.get(TRACE)
    if trace is not None:
        trace.model = model


def note_served(request: web.Request, model: str) -> None:
    """Record the model that answered (said in X-Gateway-Model and the access log)."""
    trace = request.get(TRACE)
    if trace is not None:
        trace.served_model = model


def note_worker(
    request: web.Request,
    worker: str,
    *,
    tries: int | None = None,
    upstream_s: float | None = None,
) -> None:
    """Record the worker that answered, how many tries it took and the worker's time."""
    trace = request.get(TRACE)
    if trace is not None:
        trace.worker = worker
        trace.tries = tries
        trace.upstream_s = upstream_s


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    started = time.perf_counter()
    trace = Trace(request_id_from(request.headers.get(HEADER)))
    request[REQUEST_ID] = trace.request_id
    request[TRACE] = trace
    metrics = app[METRICS]
    metrics.request_started()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # a redirect; every error is rendered by error_middleware
        status = exc.status
        raise
    except BaseException:
        status = _CLIENT_GONE  # cancelled: the client went away (handler_cancellation)
        raise
    finally:
        ended = time.perf_counter()
        seconds = ended - started
        endpoint = app[CATALOGUE].find(request)
        family = endpoint.family if endpoint is not None else "none"
        route = endpoint.path if endpoint is not None else "unmatched"
        model = _model_label(app[ROUTER], trace.model)
        metrics.request_finished(family, route, model, status, seconds)
        if model and model != "unknown":  # the dashboard's figures (gateway/live.py)
            app[LIVE].request(model, ended, seconds, status < 500)
        error = request.get(ERROR)
        if error is not None and error.code == "store_unavailable":
            metrics.redis_error("request")
        ratio = app[SETTINGS].access_log
        if ratio > 0 and (ratio >= 1 or status >= 500 or random.random() < ratio):
            _log(request, trace, route, status, seconds)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Return the request id on every answer, streams and errors included, and the model
    that answered on each answer a model gave."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[HEADER] = rid
    trace = request.get(TRACE)
    if trace is not None and trace.served_model is not None:
        model = trace.served_model
        # Header values are ASCII to every client; a name that is not goes percent-encoded.
        response.headers[MODEL_HEADER] = model if model.isascii() else quote(model, safe=_SAFE)


def _model_label(router: Router, model: str | None) -> str:
    # Only registered models become label values: a client cannot mint new series.
    if model is None:
        return ""
    return model if router.knows(model) else "unknown"


def _log(request: web.Request, trace: Trace, route: str, status: int, seconds: float) -> None:
    error = request.get(ERROR)
    line = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        "request_id": trace.request_id,
        "method": request.method,
        "route": route,
        "status": status,
        "latency_ms": round(seconds * 1000, 1),
        "model": trace.model[:200] if trace.model is not None else None,
        "served_model": trace.served_model,
        "worker": trace.worker,
        "upstream_ms": round(trace.upstream_s * 1000, 1) if trace.upstream_s is not None else None,
        "tries": trace.tries,
        "key_id": trace.key_id,
        "prompt_tokens": trace.prompt_tokens if trace.worker is not None else None,
        "completion_tokens": trace.completion_tokens if trace.worker is not None else None,
        "estimated": trace.estimated if trace.worker is not None else None,
        "error": error.code if error is not None else None,
    }
    access_log.info(orjson.dumps(line).decode())
