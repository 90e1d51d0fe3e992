"""The dashboard's JSON: the fleet at a glance, one worker in detail, an hour of history.

Admin routes, polled by the pages under /ui (gateway/routes/ui.py). Health (up/down from the
probes) is shared by every process through Redis; everything else (ejections, calls, latency,
recent errors, probe history) is this process's own view, and each answer says which process
that is.
"""

import os
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.endpoints import Routes
from gateway.errors import UnknownWorker
from gateway.live import idle_summary
from gateway.routes._common import json_response
from gateway.state import HEALTH, LIVE, ROUTER, SETTINGS
from gateway.worker import Worker

routes = Routes("admin")


class Data(BaseModel):
    """One document of dashboard figures."""

    success: bool
    data: dict[str, Any]


def _health(worker: Worker, now: float) -> dict[str, Any]:
    """The worker's state, why, and since when (a time.time(), or None when not known)."""
    stats = worker.stats
    state = stats.state(now)
    if state == "ejected":
        reason = f"ejected by this process after failures in a row: {stats.last_error}"
        since = stats.last_error_at
    elif state == "unknown":
        reason, since = "not probed yet", None
    else:
        reason, since = stats.active_reason, stats.active_since
    return {
        "state": state,
        "reason": reason,
        "since": since,
        "ejected_for_s": round(max(0.0, stats.ejected_until - now), 3),
    }


def _worker(worker: Worker, now: float, perf: float) -> dict[str, Any]:
    record, stats = worker.record, worker.stats
    return {
        "id": worker.id,
        "model_name": record.model_name,
        "label": worker.label,
        "owner": record.owner,
        "preset": record.preset,
        "weight": record.weight,
        "max_concurrency": record.max_concurrency,
        "health": _health(worker, now),
        "ejections": stats.ejected_total,
        "in_flight": stats.in_flight,
        "successes": stats.successes,
        "failures": stats.failures,
        "last_error": stats.last_error,
        "last_error_at": stats.last_error_at,
        "live": stats.window.summary(perf) if stats.window is not None else idle_summary(),
    }


def _process(request: web.Request) -> dict[str, Any]:
    health = request.app.get(HEALTH)
    return {
        "pid": os.getpid(),
        "processes": request.app[SETTINGS].processes,
        "probing": health is not None and health.leader,
    }


@routes.get("/api/server/fleet", access="admin", answer=Data)
async def fleet(request: web.Request) -> web.Response:
    """Every model and its workers: health, ejections, in flight, calls/s, errors, latency."""
    router, live = request.app[ROUTER], request.app[LIVE]
    now, perf = time.monotonic(), time.perf_counter()
    models = []
    for model in router.models():
        workers = sorted(router.workers(model), key=lambda w: (w.record.registered_at, w.id))
        views = [_worker(worker, now, perf) for worker in workers]
        models.append(
            {
                "model_name": model,
                "workers": views,
                "healthy": sum(1 for view in views if view["health"]["state"] == "up"),
                "live": live.summary(model, perf) or idle_summary(),
            }
        )
    registry: dict[str, Any] = {"loaded": router.loaded, "connected": router.connected}
    if not router.connected:
        registry["reason"] = router.reason
    data = {
        "now": time.time(),
        "process": _process(request),
        "registry": registry,
        "models": models,
    }
    return json_response({"success": True, "data": data})


@routes.get("/api/server/fleet/{worker_id}", access="admin", answer=Data)
async def one_worker(request: web.Request) -> web.Response:
    """One worker: its record (header values as ***), live figures, errors, probe history."""
    wid = request.match_info["worker_id"]
    worker = request.app[ROUTER].worker(wid)
    if worker is None:
        raise UnknownWorker(
            f"no worker has the id {wid[:40]!r} (it may have gone offline); "
            "GET /api/server/fleet lists the workers and their ids"
        )
    stats = worker.stats
    health = request.app.get(HEALTH)
    runs = health.probes.get(wid, []) if health is not None else []
    data = {
        "now": time.time(),
        "process": _process(request),
        "record": worker.record.public(),
        **_worker(worker, time.monotonic(), time.perf_counter()),
        "recent_errors": [
            {"at": at, "reason": reason} for at, reason in reversed(stats.recent_errors or ())
        ],
        "probe_target": worker.probe_target,
        "probes": [
            {
                "ok": run.ok,
                "reason": run.reason,
                "first_at": run.first_at,
                "last_at": run.last_at,
                "count": run.count,
                "last_ms": round(run.last_ms, 1),
            }
            for run in reversed(runs)
        ],
    }
    return json_response({"success": True, "data": data})


@routes.get("/api/server/history", access="admin", answer=Data)
async def history(request: web.Request) -> web.Response:
    """Each model's requests, 5xx answers and p50/p99 latency per minute, the last hour."""
    registered = set(request.app[ROUTER].models())
    data = request.app[LIVE].history(registered, time.perf_counter())
    data["process"] = _process(request)
    return json_response({"success": True, "data": data})
