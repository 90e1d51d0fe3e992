"""The worker allow-list: registrations outside it are refused with 422 and change nothing."""

from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gateway import Settings
from tests.conftest import GatewayFactory, WorkerFactory
from tests.gateway.test_seed_api import seed_registration
from tests.workers import FakeWorker


async def register_at(
    http: httpx.AsyncClient, worker: FakeWorker, url: str, **extra: Any
) -> httpx.Response:
    body = seed_registration("m", worker, req_url_template=url, **extra)
    return await http.post("/api/server/register", json=body)


async def test_worker_outside_the_networks_is_refused(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(worker_allowlist="10.0.0.0/8, fd00::/8")
    worker = await make_worker()
    async with gateway.client() as http:
        reply = await register_at(http, worker, f"{worker.url}/api/generate")
        assert reply.status_code == 422
        assert reply.json()["code"] == "worker_not_allowed"
        assert "'127.0.0.1'" in reply.json()["msg"] and "worker_allowlist" in reply.json()["msg"]
        named = await register_at(http, worker, f"{worker.url.replace('127.0.0.1', 'localhost')}/x")
        assert named.status_code == 422
        assert "resolves to 127.0.0.1" in named.json()["msg"]
        assert (await http.get("/api/server/workers")).json()["data"] == []


async def test_worker_inside_a_network_or_a_listed_name_is_registered_and_served(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(worker_allowlist=["127.0.0.0/8", "::1/128"])
    worker = await make_worker(name="w")
    async with gateway.client() as http:
        assert (await register_at(http, worker, f"{worker.url}/a")).status_code == 200
        localhost = worker.url.replace("127.0.0.1", "localhost")
        assert (await register_at(http, worker, f"{localhost}/b")).status_code == 200
        mapped = worker.url.replace("127.0.0.1", "[::ffff:127.0.0.1]")
        assert (await register_at(http, worker, f"{mapped}/c")).status_code == 200
        reply = await http.post("/api/v1/chat/completions", json={"input": "hi", "model_name": "m"})
        assert reply.json()["result"] == "w: hi"
    by_name = await make_gateway(worker_allowlist="localhost,*.models.internal")
    async with by_name.client() as http:
        localhost = worker.url.replace("127.0.0.1", "localhost")
        assert (await register_at(http, worker, f"{localhost}/d")).status_code == 200
        assert (
            await register_at(http, worker, "http://gpu-1.models.internal:8000/x")
        ).status_code == 200
        refused = await register_at(http, worker, "http://models.internal.invalid/x")
        assert refused.status_code == 422
        assert "could not be resolved" in refused.json()["msg"]
        ip = await register_at(http, worker, f"{worker.url}/e")
        assert ip.status_code == 422


async def test_a_placeholder_cannot_choose_the_host(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(worker_allowlist="*.models.internal")
    worker = await make_worker()
    async with gateway.client() as http:
        for url in (
            "http://{USER_PROMPT}.models.internal/x",
            "http://gpu.models.internal{SYSTEM_PROMPT}/x",
        ):
            reply = await register_at(http, worker, url)
            assert reply.status_code == 422, url
            assert "not be filled in from the request" in reply.json()["msg"]
        fine = await register_at(http, worker, "http://gpu.models.internal/{USER_PROMPT}/x")
        assert fine.status_code == 200
        # The worker's own model name is fixed at registration, so it may name the host.
        own = await register_at(http, worker, "http://{MODEL_NAME}.models.internal/x")
        assert own.status_code == 200


async def test_preset_workers_are_checked_too(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(worker_allowlist="10.0.0.0/8")
    async with gateway.client() as http:
        body = {"model_name": "q", "preset": "openai", "req_url_template": "http://127.0.0.1:9/v1"}
        assert (await http.post("/api/server/register", json=body)).status_code == 422
        body["req_url_template"] = "http://10.1.2.3:8000/v1"
        assert (await http.post("/api/server/register", json=body)).status_code == 200


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "300.1.1.1", "http://x", "a b", "*"])
def test_bad_allowlist_entries_stop_the_start(entry: str) -> None:
    with pytest.raises(ValidationError, match="worker_allowlist"):
        Settings(worker_allowlist=[entry])


async def test_health_url_outside_the_list_is_refused(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(worker_allowlist="10.0.0.0/8")
    async with gateway.client() as http:
        body = {
            "model_name": "q",
            "preset": "openai",
            "req_url_template": "http://10.1.2.3:8000/v1",
        }
        for health_url, shown in (
            ("http://127.0.0.1:9/health", "health_url host '127.0.0.1' is outside"),
            ("http://localhost:9/health", "health_url host 'localhost' (it resolves to"),
            ("http://:9/health", "health_url is not a valid URL"),
        ):
            reply = await http.post("/api/server/register", json={**body, "health_url": health_url})
            assert reply.status_code == 422, health_url
            assert reply.json()["code"] == "worker_not_allowed"
            assert shown in reply.json()["msg"], reply.json()["msg"]
        assert (await http.get("/api/server/workers")).json()["data"] == []
        inside = {**body, "health_url": "https://10.9.9.9/health"}
        assert (await http.post("/api/server/register", json=inside)).status_code == 200
