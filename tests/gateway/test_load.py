"""Load-aware balancing: workers' own /metrics, read by the probe loop and shared through Redis."""

from typing import Any

import httpx
from aiohttp import web

from gateway.load import parse_load
from tests.conftest import GatewayFactory, ProtocolWorkerFactory, WorkerFactory
from tests.gateway.test_fallbacks import chat, put_model
from tests.gateway.test_health import FAST_HEALTH, until
from tests.gateway.test_seed_api import register, seed_registration
from tests.workers import FakeWorker, vllm_metrics

PROBES = {**FAST_HEALTH, "probe_interval_s": 0.1, "probe_rise": 1}

LLAMA_CPP = b"""# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 4410
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.25
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
"""

SGLANG = b"""sglang:token_usage{model_name="a{b}c",tp_rank="0"} 0.5
sglang:token_usage{model_name="a{b}c",tp_rank="1"} 0.75
sglang:num_running_reqs{model_name="say \\"hi\\" }",tp_rank="0"} 4
sglang:num_running_reqs{model_name="say \\"hi\\" }",tp_rank="1"} 5
sglang:num_queue_reqs{model_name="x"} 7 1712345678000
sglang:num_queue_reqs_other{model_name="x"} 100
"""


def test_the_load_gauges_of_vllm_llama_cpp_and_sglang_are_read() -> None:
    vllm = parse_load(vllm_metrics(running=6, waiting=2, kv=0.4).encode())
    assert vllm is not None
    assert (vllm.running, vllm.waiting, vllm.kv_usage) == (6, 2, 0.4)
    llama = parse_load(LLAMA_CPP)
    assert llama is not None and (llama.running, llama.waiting, llama.kv_usage) == (3, 2, 0.25)
    sglang = parse_load(SGLANG)  # series summed, KV share the largest, labels with } and \"
    assert sglang is not None and (sglang.running, sglang.waiting, sglang.kv_usage) == (9, 7, 0.75)
    assert parse_load(b"# nothing here\nprocess_cpu_seconds_total 12\n") is None
    assert parse_load(b"vllm:num_requests_running NaN\nvllm:num_requests_waiting -3\n") is None
    assert parse_load(b"\xff\xfe garbage {{{ \x00") is None


async def register_with_metrics(http: httpx.AsyncClient, model: str, worker: FakeWorker) -> None:
    body = seed_registration(model, worker, metrics_url=f"{worker.url}/metrics")
    assert (await register(http, body)).status_code == 200


async def loads(http: httpx.AsyncClient, model: str) -> dict[str, Any]:
    listing = (await http.get("/api/server/workers", params={"model_name": model})).json()
    return {w["req_url_template"]: w["health"]["load"] for w in listing["data"]}


async def reported(http: httpx.AsyncClient, model: str, waiting: dict[str, int]) -> bool:
    """Whether every worker's report says the `waiting` given for its URL."""
    seen = await loads(http, model)
    return all(seen.get(url) and seen[url]["waiting"] == n for url, n in waiting.items())


async def test_least_load_prefers_the_worker_whose_metrics_say_it_is_idle(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    leader = await make_gateway(**PROBES)
    other = await make_gateway(**PROBES)
    busy = await make_worker(name="busy", metrics=vllm_metrics(running=30, waiting=12, kv=0.9))
    idle = await make_worker(name="idle", metrics=vllm_metrics(running=0, waiting=0, kv=0.1))
    async with leader.client() as http, other.client() as replica:
        for worker in (busy, idle):
            await register_with_metrics(http, "m", worker)
        await put_model(http, "m", balancing="least_load")
        urls = {f"{busy.url}/api/generate": 12, f"{idle.url}/api/generate": 0}
        # Read by whichever process holds the probe lease; seen by both through Redis.
        for client in (http, replica):
            await until(lambda client=client: reported(client, "m", urls))
            names = [(await chat(client, "m", f"q{i}")).json()["result"] for i in range(10)]
            assert {name.partition(":")[0] for name in names} == {"idle"}

        busy.metrics, idle.metrics = idle.metrics, busy.metrics
        swapped = {f"{busy.url}/api/generate": 0, f"{idle.url}/api/generate": 12}
        await until(lambda: reported(replica, "m", swapped))
        names = [(await chat(replica, "m", f"q{i}")).json()["result"] for i in range(10)]
        assert {name.partition(":")[0] for name in names} == {"busy"}


async def test_load_is_read_at_the_host_of_openai_workers_only_when_needed(
    make_gateway: GatewayFactory, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    gateway = await make_gateway(**PROBES)
    served = await make_protocol_worker(name="vllm", metrics=vllm_metrics(running=2, waiting=1))
    async with gateway.client() as http:
        body = {"model_name": "m", "preset": "openai", "req_url_template": served.base_url}
        assert (await http.post("/api/server/register", json=body)).status_code == 200
        await until(lambda: _state(http, "up"))
        assert list((await loads(http, "m")).values()) == [None]  # round_robin: not read

        await put_model(http, "m", balancing="prefix")
        await until(lambda: reported(http, "m", {served.base_url: 1}))
        entry = (await http.get("/api/server/workers")).json()["data"][0]
        assert entry["health"]["load"]["running"] == 2
        assert entry["stats"]["load"] == 3  # 2 running + 1 waiting, none of them ours


async def _state(http: httpx.AsyncClient, state: str) -> bool:
    listing = (await http.get("/api/server/workers")).json()["data"]
    return bool(listing) and all(w["health"]["state"] == state for w in listing)


async def test_metrics_that_redirect_are_too_large_or_vanish_give_no_load(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(**PROBES, metrics_max_bytes=4096)
    target = await make_worker(name="target", metrics=vllm_metrics(running=5))
    redirected: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        redirected.append(request.path)
        raise web.HTTPFound(f"{target.url}/metrics")

    app = web.Application()
    app.router.add_get("/metrics", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sneaky_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    big = await make_worker(name="big", metrics=vllm_metrics(running=1) + "# pad\n" * 2000)
    fine = await make_worker(name="fine", metrics=vllm_metrics(running=4))
    try:
        async with gateway.client() as http:
            sneaky = seed_registration("m", target, metrics_url=f"{sneaky_url}/metrics")
            sneaky["req_url_template"] = f"{target.url}/sneaky"
            assert (await register(http, sneaky)).status_code == 200
            await register_with_metrics(http, "m", big)
            await register_with_metrics(http, "m", fine)
            await until(lambda: reported(http, "m", {f"{fine.url}/api/generate": 0}))
            await until(lambda: len(redirected) >= 2)
            seen = await loads(http, "m")
            assert seen[f"{target.url}/sneaky"] is None  # the redirect was not followed
            assert seen[f"{big.url}/api/generate"] is None  # over metrics_max_bytes

            fine.metrics = None  # its /metrics now answers 404: the old report goes
            await until(lambda: _no_load(http, f"{fine.url}/api/generate"))
    finally:
        await runner.cleanup()


async def _no_load(http: httpx.AsyncClient, url: str) -> bool:
    return (await loads(http, "m"))[url] is None
