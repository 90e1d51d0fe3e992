"""Liveness and readiness for orchestrators and load balancers."""

import os

from aiohttp import web

from gateway.endpoints import Routes
from gateway.routes._common import json_response
from gateway.state import ROUTER

routes = Routes("system")


@routes.get("/healthz", access="public")
async def healthz(request: web.Request) -> web.Response:
    """Answer 200 while the process runs."""
    return json_response({"status": "ok", "pid": os.getpid()})


@routes.get("/readyz", access="public")
async def readyz(request: web.Request) -> web.Response:
    """Answer 200 when the registry view is loaded and Redis answers, else 503 with why."""
    router = request.app[ROUTER]
    ready = router.loaded and router.connected
    body = {
        "ready": ready,
        "registry_loaded": router.loaded,
        "store_connected": router.connected,
        "registry_version": router.version,
        "reason": "" if ready else router.reason,
    }
    return json_response(body, status=200 if ready else 503)
