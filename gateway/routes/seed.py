"""The seed's unified inference route: POST /api/v1/chat/completions."""

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import NoHealthyWorker, UnknownModel
from gateway.router import Pool, Router
from gateway.routes._body import json_response, parse
from gateway.state import ROUTER, SETTINGS, UPSTREAM
from templates import MODEL_NAME, MODEL_TEMPERATURE, USER_PROMPT

routes = web.RouteTableDef()


class SeedChatRequest(BaseModel):
    """Body of POST /api/v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    input: str
    model_name: Annotated[str, Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None


def find_pool(router: Router, model: str) -> Pool:
    """Return the model's pool, or raise 404 (unknown) / 503 (registry not loaded yet)."""
    pool = router.pool(model)
    if pool is not None:
        return pool
    if not router.loaded:
        raise NoHealthyWorker(
            f"the registry is not loaded yet ({router.reason}); retry shortly",
            headers={"Retry-After": "1"},
        )
    raise UnknownModel(
        f"no worker is registered for model {model!r}; "
        "GET /api/server/workers lists the registered models"
    )


@routes.post("/api/v1/chat/completions")
async def chat(request: web.Request) -> web.Response:
    """Send `input` to a worker of `model_name` and answer with the extracted text."""
    body = await parse(request, SeedChatRequest, "chat request")
    app = request.app
    pool = find_pool(app[ROUTER], body.model_name)
    temperature = body.temperature
    if temperature is None:
        temperature = app[SETTINGS].default_temperature
    values = {
        USER_PROMPT: body.input,
        MODEL_TEMPERATURE: temperature,
        MODEL_NAME: body.model_name,
    }
    answer = await app[UPSTREAM].complete(pool, values)
    return json_response({"success": True, "msg": "execute succeed", "result": answer.text})
