"""The seed's registry routes: register, list and take workers offline."""

import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.endpoints import Routes
from gateway.routes._common import json_response, parse
from gateway.state import ALLOWLIST, ROUTER, SESSION, SETTINGS, STORE
from gateway.verify import Limits, verify_worker
from registry import RegisterRequest, WorkerKey, WorkerRecord
from templates import presets

routes = Routes("admin")


class Done(BaseModel):
    """A registry change succeeded."""

    success: bool
    msg: str


class Registered(Done):
    id: str


class Beat(Done):
    ttl_s: float | None


class Listing(BaseModel):
    """A list of records (workers, presets or API keys)."""

    success: bool
    data: list[dict[str, Any]]


@routes.post("/api/server/register", access="admin", body=RegisterRequest, answer=Registered)
async def register(request: web.Request) -> web.Response:
    """Register a worker (or replace it with "replace": true); "verify": true calls it first."""
    body = await parse(request, RegisterRequest, "register request")
    app = request.app
    spec = body.spec()
    await app[ALLOWLIST].check(spec)
    if body.verify:
        settings = app[SETTINGS]
        limits = Limits(
            max_response_bytes=settings.max_response_bytes,
            max_stream_line_bytes=settings.max_stream_line_bytes,
            temperature=settings.default_temperature,
        )
        await verify_worker(app[SESSION], spec, limits)
    record = WorkerRecord.from_spec(spec)
    change = await app[STORE].put(record, replace=body.replace)
    app[ROUTER].apply_local(change)
    verb = "replace" if body.replace else "register"
    return json_response(
        {"success": True, "msg": f"{verb} LLM {record.model_name} succeed!", "id": record.id}
    )


@routes.get("/api/server/workers", access="admin", answer=Listing)
async def workers(request: web.Request) -> web.Response:
    """List registered workers (optionally of one model); header values are never shown."""
    model = request.query.get("model_name")
    router = request.app[ROUTER]
    now = time.monotonic()
    listed = []
    for worker in router.workers(model):
        entry = worker.record.public()
        stats = worker.stats
        ejected_for_s = max(0.0, stats.ejected_until - now)
        entry["health"] = {
            "state": stats.state(now),
            "probe": stats.active,
            "probe_since": stats.active_since,
            "probe_reason": stats.active_reason,
            "ejected_for_s": round(ejected_for_s, 3),
            "load": stats.report.model_dump() if stats.report is not None else None,
        }
        entry["stats"] = {
            "in_flight": stats.in_flight,
            "load": stats.load(),
            "successes": stats.successes,
            "failures": stats.failures,
            "consecutive_failures": stats.consecutive_failures,
            "last_error": stats.last_error,
            "last_error_at": stats.last_error_at,
        }
        listed.append(entry)
    listed.sort(key=lambda e: (e["model_name"], e["registered_at"], e["req_url_template"]))
    return json_response({"success": True, "data": listed})


@routes.post("/api/server/offline", access="admin", body=WorkerKey, answer=Done)
async def offline(request: web.Request) -> web.Response:
    """Remove a worker by its identity (model_name, req_url_template)."""
    key = await parse(request, WorkerKey, "offline request")
    change = await request.app[STORE].delete(key.model_name, key.req_url_template)
    request.app[ROUTER].apply_local(change)
    return json_response(
        {
            "success": True,
            "msg": f"remove llm worker(model_name={key.model_name}, "
            f"url={key.req_url_template}) succeed!",
        }
    )


@routes.post("/api/server/heartbeat", access="admin", body=WorkerKey, answer=Beat)
async def heartbeat(request: web.Request) -> web.Response:
    """Keep a worker registered with ttl_s alive for another ttl_s."""
    key = await parse(request, WorkerKey, "heartbeat request")
    ttl_s = await request.app[STORE].heartbeat(key.model_name, key.req_url_template)
    return json_response({"success": True, "msg": "heartbeat received", "ttl_s": ttl_s or None})


@routes.get("/api/server/presets", access="admin", answer=Listing)
async def list_presets(request: web.Request) -> web.Response:
    """Show the built-in presets (protocol, paths and templates) a worker can register with."""
    return json_response({"success": True, "data": list(presets.all_presets().values())})
