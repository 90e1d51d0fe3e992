"""The OpenAPI document: every route, the handlers' own models, security as configured."""

from typing import Any

import httpx
from pydantic import BaseModel

from gateway.openapi import OllamaError, OpenAIError, SeedError
from gateway.routes.admin import Done, Registered
from gateway.routes.seed import SeedChatAnswer
from registry import RegisterRequest
from tests.conftest import Gateway, GatewayFactory, WorkerFactory
from tests.gateway.test_auth import ADMIN
from tests.gateway.test_seed_api import seed_registration


async def fetch(gateway: Gateway) -> dict[str, Any]:
    async with gateway.client() as http:
        reply = await http.get("/openapi.json")
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    document: dict[str, Any] = reply.json()
    return document


async def test_every_registered_route_is_in_the_document(gateway: Gateway) -> None:
    document = await fetch(gateway)
    assert document["openapi"].startswith("3.1")
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in gateway.app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # HEAD comes with each GET
    }
    documented = {
        (method, path) for path, operations in document["paths"].items() for method in operations
    }
    assert routes == documented
    assert len(routes) >= 20


async def test_bodies_are_the_handlers_models(gateway: Gateway) -> None:
    document = await fetch(gateway)
    schemas = document["components"]["schemas"]
    register = document["paths"]["/api/server/register"]["post"]
    ref = register["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = schemas[ref.rsplit("/", 1)[1]]
    assert set(schema["properties"]) == set(RegisterRequest.model_fields)
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert document["paths"]["/api/server/keys/{key_id}"]["delete"]["parameters"][0]["name"] == (
        "key_id"
    )
    errors = {
        path: ops["post"]["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"]
        for path, ops in document["paths"].items()
        if "post" in ops
    }
    assert errors["/v1/embeddings"].endswith("/OpenAIError")
    assert errors["/api/embed"].endswith("/OllamaError")
    assert errors["/api/server/offline"].endswith("/SeedError")
    assert "security" not in register  # an open gateway asks for nothing


async def test_security_is_declared_where_credentials_are_required(
    make_gateway: GatewayFactory,
) -> None:
    document = await fetch(await make_gateway(admin_token=ADMIN, require_api_keys=True))
    paths = document["paths"]
    assert paths["/api/server/register"]["post"]["security"] == [{"adminToken": []}]
    assert paths["/v1/chat/completions"]["post"]["security"] == [{"apiKey": []}]
    assert "security" not in paths["/healthz"]["get"]
    assert "security" not in paths["/metrics"]["get"]
    assert set(document["components"]["securitySchemes"]) == {"adminToken", "apiKey"}


async def test_answers_match_their_documented_models(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker()
    registration = seed_registration("m", worker)
    identity = {"model_name": "m", "req_url_template": registration["req_url_template"]}
    calls: list[tuple[str, dict[str, Any], int, type[BaseModel]]] = [
        ("/api/server/register", registration, 200, Registered),
        ("/api/v1/chat/completions", {"input": "x", "model_name": "m"}, 200, SeedChatAnswer),
        ("/api/v1/chat/completions", {"input": "x", "model_name": "ghost"}, 404, SeedError),
        ("/v1/embeddings", {"model": "ghost", "input": "x"}, 404, OpenAIError),
        ("/api/embed", {"model": "ghost", "input": "x"}, 404, OllamaError),
        ("/api/server/offline", identity, 200, Done),
    ]
    for path, body, status, answer in calls:
        reply = await client.post(path, json=body)
        assert reply.status_code == status, (path, reply.text)
        answer.model_validate(reply.json())
