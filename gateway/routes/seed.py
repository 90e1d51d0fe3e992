"""The seed's unified inference route: POST /api/v1/chat/completions."""

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.calls import Call
from gateway.endpoints import Routes
from gateway.observe import REQUEST_ID
from gateway.routes._common import complete, json_response, parse
from gateway.state import SETTINGS
from templates.conversation import Conversation, Message, Params

routes = Routes("seed")


class SeedChatRequest(BaseModel):
    """Body of POST /api/v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    input: str
    model_name: Annotated[str, Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None


class SeedChatAnswer(BaseModel):
    """Answer of POST /api/v1/chat/completions."""

    success: bool
    msg: str
    result: str


@routes.post(
    "/api/v1/chat/completions", access="inference", body=SeedChatRequest, answer=SeedChatAnswer
)
async def chat(request: web.Request) -> web.Response:
    """Send `input` to a worker of `model_name` and answer with the extracted text."""
    body = await parse(request, SeedChatRequest, "chat request")
    app = request.app
    temperature = body.temperature
    if temperature is None:
        temperature = app[SETTINGS].default_temperature
    conversation = Conversation((Message("user", body.input),), Params(temperature=temperature))
    call = Call(
        "seed",
        "chat",
        None,
        stream=False,
        decode=lambda: conversation,
        request_id=request[REQUEST_ID],
    )
    answer = await complete(request, body.model_name, call)
    text = answer.reply.text if answer.reply is not None else ""
    return json_response({"success": True, "msg": "execute succeed", "result": text})
