"""Admin routes for inference API keys: create (the key is shown once), list, revoke."""

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.auth import GUARD
from gateway.endpoints import Routes
from gateway.routes._common import json_response, parse
from gateway.routes.admin import Done, Listing
from gateway.state import API_KEYS
from registry import NewApiKey, UnknownApiKey

routes = Routes("admin")

_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


class Created(BaseModel):
    """A new key: `data.key` is the secret, shown this once."""

    success: bool
    msg: str
    data: dict[str, Any]


@routes.post("/api/server/keys", access="admin", body=NewApiKey, answer=Created)
async def create_key(request: web.Request) -> web.Response:
    """Create an inference API key; the answer holds the key, which is not shown again."""
    spec = await parse(request, NewApiKey, "new API key")
    key, secret = await request.app[API_KEYS].create(spec)
    return json_response(
        {
            "success": True,
            "msg": f"created API key {key.name!r}: keep data.key now, it cannot be shown again",
            "data": {**key.public(), "key": secret},
        }
    )


@routes.get("/api/server/keys", access="admin", answer=Listing)
async def list_keys(request: web.Request) -> web.Response:
    """List API keys: id, name, created_at, limits and spend (never the key or its hash)."""
    store = request.app[API_KEYS]
    keys = await store.list()
    spend = await store.spend(keys)
    data = [{**key.public(), "spend": spend[key.id].public()} for key in keys]
    return json_response({"success": True, "data": data})


@routes.delete("/api/server/keys/{key_id}", access="admin", answer=Done)
async def revoke_key(request: web.Request) -> web.Response:
    """Revoke an API key; other processes stop accepting it within api_key_cache_ttl_s."""
    key_id = request.match_info["key_id"]
    if not _KEY_ID.match(key_id):
        raise UnknownApiKey(
            f"{key_id[:40]!r} is not an API key id; GET /api/server/keys lists them"
        )
    key = await request.app[API_KEYS].revoke(key_id)
    request.app[GUARD].cache.forget(key.sha256)
    return json_response({"success": True, "msg": f"revoked API key {key.id} ({key.name!r})"})
