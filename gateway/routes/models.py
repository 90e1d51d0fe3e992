"""Model settings routes: balancing, fallbacks and aliases per model (docs/routing.md).

A model's name may hold slashes (`meta-llama/Llama-3.1-8B`): the routes take the rest of the
path as the name.
"""

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.endpoints import Routes
from gateway.errors import InvalidRequest, UnknownModel
from gateway.router import Router
from gateway.routes._common import json_response, parse
from gateway.state import ROUTER, STORE
from registry import ModelRecord, ModelSettings, check_name

routes = Routes("admin")

_PATH = "/api/server/models/{name:.+}"


class ModelAnswer(BaseModel):
    """One model: where its settings come from, what they are, how many workers it has."""

    success: bool
    data: dict[str, Any]


class ModelListing(BaseModel):
    """Every model with workers or settings."""

    success: bool
    data: list[dict[str, Any]]


class Removed(BaseModel):
    success: bool
    msg: str


def entry(router: Router, name: str) -> dict[str, Any]:
    """Describe one model as the listing shows it."""
    settings = router.settings_of(name)
    stored = router.stored(name)
    pool = router.pool(name)
    alias = settings is not None and settings.alias is not None
    return {
        "name": name,
        "source": router.source_of(name) or "default",  # api, config, or none set
        "alias": alias,
        "balancing": None if alias else router.balancing_of(name),
        "workers": len(pool.workers) if pool is not None else 0,
        "settings": (settings or ModelSettings()).model_dump(),
        "updated_at": stored.updated_at if stored is not None else None,
    }


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    try:
        return check_name(name)
    except ValueError as exc:
        raise InvalidRequest(f"model name {name[:200]!r}: {exc}") from None


@routes.get("/api/server/models", access="admin", answer=ModelListing)
async def list_models(request: web.Request) -> web.Response:
    """List every model with workers or settings, and its effective settings."""
    router = request.app[ROUTER]
    data = [entry(router, name) for name in router.model_names()]
    return json_response({"success": True, "data": data})


@routes.get(_PATH, access="admin", answer=ModelAnswer)
async def get_model(request: web.Request) -> web.Response:
    """Show one model's effective settings and where they come from."""
    router = request.app[ROUTER]
    name = _name(request)
    if router.pool(name) is None and router.settings_of(name) is None:
        raise UnknownModel(
            f"model {name!r} has no workers and no settings; "
            "GET /api/server/models lists the known ones"
        )
    return json_response({"success": True, "data": entry(router, name)})


@routes.put(_PATH, access="admin", body=ModelSettings, answer=ModelAnswer)
async def put_model(request: web.Request) -> web.Response:
    """Set a model's balancing, fallbacks or alias (replacing what was set before)."""
    name = _name(request)
    settings = await parse(request, ModelSettings, "model settings")
    router = request.app[ROUTER]
    try:
        settings.checked_for(name)
    except ValueError as exc:
        raise InvalidRequest(f"invalid model settings: {exc}") from None
    for target in settings.alias or ():
        if router.alias_of(target.model) is not None:
            raise InvalidRequest(
                f"invalid model settings: alias target {target.model!r} is an alias itself; "
                "name the models it stands for instead"
            )
    change = await request.app[STORE].put_model(ModelRecord(name=name, settings=settings))
    router.apply_local(change)
    return json_response({"success": True, "data": entry(router, name)})


@routes.delete(_PATH, access="admin", answer=Removed)
async def delete_model(request: web.Request) -> web.Response:
    """Remove a model's settings set through the API (the config file's apply again)."""
    name = _name(request)
    change = await request.app[STORE].delete_model(name)
    request.app[ROUTER].apply_local(change)
    return json_response({"success": True, "msg": f"settings of model {name!r} removed"})
