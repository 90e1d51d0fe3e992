"""Reading and answering JSON bodies, shared by every route family."""

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.errors import BadRequest, invalid

M = TypeVar("M", bound=BaseModel)


async def parse(request: web.Request, model: type[M], what: str) -> M:
    """Read the body and validate it as `model`; 400 when not JSON, 422 when invalid."""
    raw = await request.read()
    if not raw:
        raise BadRequest(f"{what} is empty; send a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid(exc, what) from None


def json_response(data: Any, status: int = 200) -> web.Response:
    """Serialise `data` with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
