"""The dashboard's JSON: live figures per worker and model, one worker's detail, an hour of
history, and the files under /ui."""

import os
from typing import Any

import httpx

from tests.conftest import GatewayFactory, WorkerFactory
from tests.gateway.test_health import FAST_HEALTH, chat, until
from tests.gateway.test_seed_api import register, seed_registration

ADMIN = "fleet-admin-token-0123456"


async def fleet(http: httpx.AsyncClient) -> dict[str, Any]:
    reply = await http.get("/api/server/fleet")
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()["data"]
    return data


def by_label(data: dict[str, Any], model: str) -> dict[str, dict[str, Any]]:
    found = next(m for m in data["models"] if m["model_name"] == model)
    return {w["label"]: w for w in found["workers"]}


async def test_fleet_counts_each_workers_calls_failures_latency_and_ejections(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(eject_after_failures=2)
    good, bad = await make_worker(name="good"), await make_worker(name="bad", status=500)
    async with gateway.client() as http:
        for worker in (good, bad):
            assert (await register(http, seed_registration("m", worker))).status_code == 200
        for _ in range(10):
            assert (await chat(http, "m")).status_code == 200  # failed over to the good one
        data = await fleet(http)

    assert data["process"]["pid"] == os.getpid() and data["process"]["processes"] == 1
    model = data["models"][0]
    assert model["model_name"] == "m"
    assert model["live"]["calls"] == 10 and model["live"]["failures"] == 0
    assert model["live"]["p50_ms"] is not None
    workers = by_label(data, "m")
    served = workers[f"{good.url}/api/generate"]
    assert served["live"]["calls"] == 10 and served["live"]["error_rate"] == 0
    assert served["live"]["p50_ms"] <= served["live"]["p99_ms"]
    assert served["health"]["state"] in ("up", "unknown")
    failing = workers[f"{bad.url}/api/generate"]
    assert failing["live"]["failures"] == bad.count == 2  # then ejected: no more calls
    assert failing["live"]["error_rate"] == 1.0
    assert failing["ejections"] == 1
    assert failing["health"]["state"] == "ejected"
    assert "HTTP 500" in failing["health"]["reason"]
    assert failing["health"]["ejected_for_s"] > 0


async def test_one_worker_shows_its_record_masked_its_errors_and_probe_history(
    make_worker: WorkerFactory,  # first: stopped after the gateway that probes it
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(**FAST_HEALTH)
    worker = await make_worker(name="w", status=503)
    body = seed_registration("m", worker, header={"Authorization": "Bearer sekrit-upstream"})
    async with gateway.client() as http:
        wid = (await register(http, body)).json()["id"]
        assert (await chat(http, "m", "first")).status_code == 502
        worker.status = 500
        assert (await chat(http, "m", "second")).status_code == 502

        async def probed() -> bool:
            reply = await http.get(f"/api/server/fleet/{wid}")
            return bool(reply.json()["data"]["probes"])

        await until(probed)
        reply = await http.get(f"/api/server/fleet/{wid}")
        unknown = await http.get("/api/server/fleet/0123456789abcdef01234567")

    assert reply.status_code == 200
    assert "sekrit-upstream" not in reply.text
    data = reply.json()["data"]
    assert data["record"]["header"] == {"Authorization": "***"}
    assert data["record"]["req_url_template"] == f"{worker.url}/api/generate"
    errors = [e["reason"] for e in data["recent_errors"]]
    assert len(errors) == 2
    assert "HTTP 500" in errors[0] and "HTTP 503" in errors[1]  # newest first
    assert data["process"]["probing"] is True  # this process holds the probe lease
    run = data["probes"][0]
    assert run["ok"] is True and run["count"] >= 1  # a TCP connect: the port answers
    assert data["probe_target"] == f"tcp://127.0.0.1:{worker.url.rpartition(':')[2]}"
    assert unknown.status_code == 404
    assert "GET /api/server/fleet" in unknown.json()["msg"]


async def test_history_counts_each_models_requests_and_5xx_this_hour(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    ok, broken = await make_worker(name="ok"), await make_worker(name="broken", status=500)
    async with gateway.client() as http:
        await register(http, seed_registration("fine", ok))
        await register(http, seed_registration("failing", broken))
        for _ in range(5):
            await chat(http, "fine")
        await chat(http, "failing")
        await chat(http, "not-registered")  # 404: no series for a name a client made up
        reply = await http.get("/api/server/history")

    data = reply.json()["data"]
    assert data["minute_s"] == 60
    models = {m["model_name"]: m for m in data["models"]}
    assert sorted(models) == ["failing", "fine"]
    fine, failing = models["fine"], models["failing"]
    assert len(fine["calls"]) == 60
    assert sum(fine["calls"]) == 5 and sum(fine["failures"]) == 0
    assert sum(failing["calls"]) == 1 and sum(failing["failures"]) == 1
    assert fine["p50_ms"][-1] is not None or fine["p50_ms"][-2] is not None
    assert data["first_minute_at"] < data["now"]


async def test_dashboard_data_needs_the_admin_token_and_its_files_do_not(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(admin_token=ADMIN)
    async with gateway.client() as http:
        for path in ("/api/server/fleet", "/api/server/fleet/abc", "/api/server/history"):
            assert (await http.get(path)).status_code == 401, path
        signed = {"Authorization": f"Bearer {ADMIN}"}
        assert (await http.get("/api/server/fleet", headers=signed)).status_code == 200

        root = await http.get("/ui")
        assert root.status_code == 302 and root.headers["Location"] == "ui/"
        page = await http.get("/ui/")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert '<script type="module" src="main.js">' in page.text
        script = await http.get("/ui/main.js")
        assert script.headers["Content-Type"].startswith("text/javascript")
        for answer in (page, script):
            csp = answer.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
        missing = await http.get("/ui/secrets.json")
        assert missing.status_code == 404 and "open /ui/" in missing.json()["msg"]
        escaped = await http.get("/ui/..%2Fapp.py")
        assert escaped.status_code == 404
