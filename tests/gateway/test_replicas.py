"""Many gateways, one Redis: replicas converge, Redis faults lose nothing, Cluster works."""

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from registry import EmbeddedRedis
from tests.cluster import local_cluster
from tests.conftest import GatewayFactory, WorkerFactory
from tests.gateway.test_cli import data_dir, embedded_pids, start  # noqa: F401 - fixture
from tests.gateway.test_health import chat, until
from tests.gateway.test_seed_api import register, seed_registration
from tests.sentinel import local_sentinel


@pytest.mark.slow
def test_processes_share_one_port_and_stop_together(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    served = start(data_dir, tmp_path, "--processes", "2")
    try:
        pids = set()
        # A fresh connection per request: the kernel spreads them over the processes.
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
            # The second process may still be starting when the first answers /readyz.
            asked = []
            for _ in range(400):
                asked.append(client.get(f"{served.url}/healthz").json()["pid"])
                pids.add(asked[-1])
                if len(pids) == 2 and len(asked) >= 40:
                    break
                time.sleep(0.01)
            assert len(pids) == 2
            body = {
                "model_name": "m",
                "req_url_template": "http://127.0.0.1:9/gen",
                "body": {"input": "{USER_PROMPT}"},
            }
            assert client.post(f"{served.url}/api/server/register", json=body).status_code == 200
            # Every process serves the registration: 40 fresh connections, all see it.
            listed = []
            for _ in range(40):
                listed.append(len(client.get(f"{served.url}/api/server/workers").json()["data"]))
            assert listed[-20:] == [1] * 20, listed
            # A scrape of any process counts the requests of all of them.
            scrape = client.get(f"{served.url}/metrics").text
            counted = [
                float(line.rsplit(" ", 1)[1])
                for line in scrape.splitlines()
                if line.startswith("gateway_requests_total{") and "healthz" in line
            ]
            assert sum(counted) == len(asked), scrape
        assert len(embedded_pids(data_dir)) == 1
    finally:
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(20) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert embedded_pids(data_dir) == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


async def test_three_gateways_see_every_change(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateways = [await make_gateway() for _ in range(3)]
    worker = await make_worker(name="w")
    clients = [g.client() for g in gateways]
    try:
        assert (await register(clients[0], seed_registration("m", worker))).status_code == 200
        for client in clients:
            await until(lambda c=client: _listed(c, 1))
            assert (await chat(client, "m", "hi")).json()["result"] == "w: hi"
        key = {"model_name": "m", "req_url_template": f"{worker.url}/api/generate"}
        assert (await clients[2].post("/api/server/offline", json=key)).status_code == 200
        for client in clients:
            await until(lambda c=client: _listed(c, 0))
            assert (await chat(client, "m")).status_code == 404
    finally:
        for client in clients:
            await client.aclose()


async def _listed(client: httpx.AsyncClient, count: int) -> bool:
    return len((await client.get("/api/server/workers")).json()["data"]) == count


async def test_redis_killed_and_restarted_under_load_loses_nothing(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persist=True)
    server.start()
    try:
        first = await make_gateway(redis_url=server.url)
        second = await make_gateway(redis_url=server.url)
        worker = await make_worker(name="w")
        statuses: Counter[int] = Counter()
        stop = asyncio.Event()
        async with first.client() as one, second.client() as two:
            assert (await register(one, seed_registration("m", worker))).status_code == 200
            await until(lambda: _listed(two, 1))

            async def load(client: httpx.AsyncClient) -> None:
                while not stop.is_set():
                    statuses[(await chat(client, "m")).status_code] += 1

            tasks = [asyncio.create_task(load(c)) for c in (one, two, one, two)]
            await asyncio.sleep(0.3)
            server.stop()  # Redis goes away under load
            await until(lambda: _not_ready(one))
            refused = await register(one, seed_registration("late", worker))
            assert refused.status_code == 503
            await asyncio.sleep(0.5)
            server.start()  # and comes back, with its append-only file
            await until(lambda: _ready(one), timeout_s=15)
            await until(lambda: _ready(two), timeout_s=15)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks)
            assert set(statuses) == {200}, statuses
            assert statuses[200] > 20
            for client in (one, two):
                listing = (await client.get("/api/server/workers")).json()["data"]
                assert [w["model_name"] for w in listing] == ["m"]
            assert (await register(two, seed_registration("late", worker))).status_code == 200
            await until(lambda: _listed(one, 2))
    finally:
        server.stop()


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def _not_ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 503


async def test_gateway_started_while_redis_is_down_becomes_ready_when_it_comes(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "late-redis", persist=False)
    gateway = await make_gateway(redis_url=server.url)
    try:
        async with gateway.client() as client:
            early = await client.get("/readyz")
            assert early.status_code == 503
            assert early.json()["reason"]
            routed = await chat(client, "anything")
            assert routed.status_code == 503
            assert "not loaded" in routed.json()["msg"]
            server.start()
            await until(lambda: _ready(client), timeout_s=15)
            worker = await make_worker()
            assert (await register(client, seed_registration("m", worker))).status_code == 200
            assert (await chat(client, "m")).status_code == 200
    finally:
        server.stop()


async def test_a_redis_cluster_serves_as_the_registry(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    with local_cluster(tmp_path) as ports:
        url = f"redis+cluster://127.0.0.1:{ports[0]}"
        first = await make_gateway(redis_url=url)
        second = await make_gateway(redis_url=f"redis+cluster://127.0.0.1:{ports[2]}")
        worker = await make_worker(name="c")
        async with first.client() as one, second.client() as two:
            assert (await register(one, seed_registration("m", worker))).status_code == 200
            assert (await register(one, seed_registration("m", worker))).status_code == 409
            await until(lambda: _listed(two, 1))
            assert (await chat(two, "m", "via cluster")).json()["result"] == "c: via cluster"
            key = {"model_name": "m", "req_url_template": f"{worker.url}/api/generate"}
            assert (await two.post("/api/server/offline", json=key)).status_code == 200
            await until(lambda: _listed(one, 0))


def test_unsupported_redis_url_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main
    from gateway.settings import ValidationError, load_settings

    with pytest.raises(ValidationError, match="redis\\+sentinel://"):
        load_settings({"redis_url": "memcached://127.0.0.1:11211"}, environ={})
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    # `serve` stops before starting anything, names the schemes it takes, and keeps the
    # URL's password out of what it prints.
    assert main(["serve", "--redis-url", "memcached://user:hunter22@127.0.0.1:11211"]) == 2
    printed = capsys.readouterr()
    assert "redis+sentinel://" in printed.err
    assert "hunter22" not in printed.out + printed.err


async def test_sentinel_names_the_registry_master(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    with local_sentinel(tmp_path) as port:
        gateway = await make_gateway(redis_url=f"redis+sentinel://127.0.0.1:{port}/gateway-main")
        worker = await make_worker(name="s")
        async with gateway.client() as client:
            await until(lambda: _ready(client))
            assert (await register(client, seed_registration("m", worker))).status_code == 200
            assert (await chat(client, "m", "via sentinel")).json()["result"] == "s: via sentinel"
            listing = (await client.get("/api/server/workers")).json()["data"]
            assert [w["model_name"] for w in listing] == ["m"]
