"""Health checking, failover and balancing: clients never see a dead worker."""

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from registry import RegistryStore
from tests.conftest import GatewayFactory, WorkerFactory
from tests.gateway.test_cli import free_port, start
from tests.gateway.test_seed_api import register, seed_registration

FAST_HEALTH = {
    "probe_interval_s": 0.2,
    "probe_timeout_s": 0.5,
    "probe_rise": 2,
    "probe_fall": 1,
    "probe_lease_s": 1.0,
    "ejection_base_s": 0.5,
}


async def chat(client: httpx.AsyncClient, model: str, text: str = "x") -> httpx.Response:
    return await client.post("/api/v1/chat/completions", json={"input": text, "model_name": model})


async def until(check: Callable[[], Any], timeout_s: float = 10.0, every_s: float = 0.05) -> None:
    """Poll an async or sync check until it is truthy; fail after `timeout_s` (a hang guard)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(every_s)


async def health_of(client: httpx.AsyncClient, model: str) -> dict[str, str]:
    listing = (await client.get("/api/server/workers", params={"model_name": model})).json()
    return {w["req_url_template"]: w["health"]["state"] for w in listing["data"]}


class WorkerProcess:
    """A worker in its own process on a fixed port, so it can be killed and restarted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.worker_process", str(self.port), self.name],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "READY"

    def kill(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process.stdout.close()

    def served(self) -> int:
        served: int = httpx.get(f"{self.url}/count").json()["served"]
        return served


@pytest.fixture
def worker_processes() -> Iterator[Callable[[str], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        worker = WorkerProcess(name)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process is not None and worker.process.poll() is None:
            worker.kill()


@pytest.mark.slow
async def test_killing_a_worker_under_load_fails_no_request_and_it_rejoins(
    make_gateway: GatewayFactory, worker_processes: Callable[[str], WorkerProcess]
) -> None:
    gateway = await make_gateway(**FAST_HEALTH)
    workers = [worker_processes(f"w{i}") for i in range(3)]
    async with gateway.client() as client:
        for worker in workers:
            body = seed_registration("m", worker, health_url=f"{worker.url}/health")
            body["req_url_template"] = f"{worker.url}/api/generate"
            assert (await register(client, body)).status_code == 200

        statuses: Counter[int] = Counter()
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                reply = await chat(client, "m")
                statuses[reply.status_code] += 1

        clients = [asyncio.create_task(load()) for _ in range(8)]
        await asyncio.sleep(0.5)
        victim = workers[1]
        victim.kill()
        await asyncio.sleep(1.0)
        states = await health_of(client, "m")
        assert states[f"{victim.url}/api/generate"] in ("down", "ejected")

        victim.start()  # same port: the worker comes back
        await until(lambda: victim.served() > 0, timeout_s=10)
        stop.set()
        await asyncio.gather(*clients)
    assert statuses[200] > 50
    assert set(statuses) == {200}, statuses


async def test_hanging_worker_times_out_is_retried_elsewhere_and_ejected(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(eject_after_failures=2, ejection_base_s=30)
    hung, healthy = await make_worker(name="hung", delay_s=10), await make_worker(name="ok")
    async with gateway.client() as client:
        await register(client, seed_registration("m", hung, timeout_s=0.2))
        await register(client, seed_registration("m", healthy))
        replies = [await chat(client, "m", str(i)) for i in range(6)]
        assert [r.status_code for r in replies] == [200] * 6
        assert all(r.json()["result"].startswith("ok:") for r in replies)
        assert hung.count == 2  # two timeouts, then it is ejected and skipped
        states = await health_of(client, "m")
        assert states[f"{hung.url}/api/generate"] == "ejected"
        listing = (await client.get("/api/server/workers")).json()["data"]
        hung_entry = next(w for w in listing if w["req_url_template"].startswith(hung.url))
        assert hung_entry["stats"]["consecutive_failures"] == 2
        assert "no answer within 0.2s" in hung_entry["stats"]["last_error"]


async def test_failing_worker_is_ejected_then_restored_when_healthy(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(eject_after_failures=2, ejection_base_s=0.5, max_tries=2)
    flaky, steady = await make_worker(name="flaky", status=500), await make_worker(name="steady")
    async with gateway.client() as client:
        await register(client, seed_registration("m", flaky))
        await register(client, seed_registration("m", steady))
        for i in range(6):
            assert (await chat(client, "m", str(i))).status_code == 200
        assert flaky.count == 2
        assert (await health_of(client, "m"))[f"{flaky.url}/api/generate"] == "ejected"

        flaky.status = 200  # the worker recovers
        await asyncio.sleep(0.6)  # the ejection (0.5 s) ends
        results = [(await chat(client, "m", str(i))).json()["result"] for i in range(4)]
        assert sorted(r.split(":")[0] for r in results) == ["flaky", "flaky", "steady", "steady"]
        assert (await health_of(client, "m"))[f"{flaky.url}/api/generate"] != "ejected"


async def test_ejection_backoff_grows_with_repeated_ejections(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(eject_after_failures=1, ejection_base_s=0.3, max_tries=1)
    bad = await make_worker(name="bad", status=503)
    async with gateway.client() as client:
        await register(client, seed_registration("m", bad))
        ejected_for = []
        for _ in range(3):
            reply = await chat(client, "m")
            assert reply.status_code == 502
            listing = (await client.get("/api/server/workers")).json()["data"]
            ejected_for.append(listing[0]["health"]["ejected_for_s"])
            fast = await chat(client, "m")
            assert fast.status_code == 503
            assert int(fast.headers["Retry-After"]) >= 1
            await until(lambda: health_of(client, "m"), timeout_s=5)
            await asyncio.sleep(ejected_for[-1] + 0.05)
    # 0.3, 0.6, 1.2 s: each ejection twice as long as the one before
    assert ejected_for[0] <= 0.3 < ejected_for[1] <= 0.6 < ejected_for[2] <= 1.2


async def test_active_probes_take_a_down_worker_out_and_bring_it_back(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(**FAST_HEALTH)
    ok, sick = await make_worker(name="ok"), await make_worker(name="sick")
    async with gateway.client() as client:
        await register(client, seed_registration("m", ok, health_url=f"{ok.url}/health"))
        await register(client, seed_registration("m", sick, health_url=f"{sick.url}/health"))
        sick.status = 503  # its health endpoint (and everything else) now fails
        await until(lambda: _state_is(client, sick, "down"))
        before = sick.count
        for i in range(4):
            assert (await chat(client, "m", str(i))).json()["result"].startswith("ok:")
        assert sick.count == before  # only probes reached it, no request

        sick.status = 200
        await until(lambda: _state_is(client, sick, "up"))
        results = [(await chat(client, "m", str(i))).json()["result"] for i in range(4)]
        assert sum(r.startswith("sick:") for r in results) == 2


async def test_tcp_probe_is_used_without_a_health_url(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(**FAST_HEALTH)
    worker = await make_worker(name="plain")
    async with gateway.client() as client:
        await register(client, seed_registration("m", worker))
        await until(lambda: _state_is(client, worker, "up"))
        await worker.stop()
        await until(lambda: _state_is(client, worker, "down"))
        reply = await chat(client, "m")
        assert reply.status_code == 503
        assert "no healthy worker" in reply.json()["msg"]
        assert reply.headers["Retry-After"] == "1"
    assert worker.count == 0  # TCP probes only: no HTTP request ever reached it


async def _state_is(client: httpx.AsyncClient, worker: Any, state: str) -> bool:
    return (await health_of(client, "m")).get(f"{worker.url}/api/generate") == state


async def test_all_workers_down_answers_503_without_trying_them(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(eject_after_failures=1, ejection_base_s=60, max_tries=2)
    first, second = await make_worker(status=500), await make_worker(status=500)
    async with gateway.client() as client:
        await register(client, seed_registration("m", first))
        await register(client, seed_registration("m", second))
        assert (await chat(client, "m")).status_code == 502  # both tried, both ejected
        reply = await chat(client, "m")
        assert reply.status_code == 503
        assert int(reply.headers["Retry-After"]) > 50
        assert (first.count, second.count) == (1, 1)


async def test_panic_mode_tries_ejected_workers_anyway(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(
        eject_after_failures=1, ejection_base_s=60, max_tries=1, panic_mode=True
    )
    worker = await make_worker(status=500)
    async with gateway.client() as client:
        await register(client, seed_registration("m", worker))
        assert (await chat(client, "m")).status_code == 502
        worker.status = 200
        assert (await chat(client, "m")).status_code == 200  # tried although ejected


async def test_weighted_split_follows_the_weights(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(balancing="weighted")
    light, heavy = await make_worker(name="light"), await make_worker(name="heavy")
    async with gateway.client() as client:
        await register(client, seed_registration("m", light, weight=1))
        await register(client, seed_registration("m", heavy, weight=3))
        for batch in range(10):
            await asyncio.gather(*(chat(client, "m", f"{batch}-{i}") for i in range(100)))
    assert light.count + heavy.count == 1000
    assert abs(heavy.count / 1000 - 0.75) <= 0.05


async def test_least_outstanding_prefers_the_idle_worker(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(balancing="least_outstanding")
    slow, fast = await make_worker(name="slow", delay_s=0.5), await make_worker(name="fast")
    async with gateway.client() as client:
        await register(client, seed_registration("m", slow))
        await register(client, seed_registration("m", fast))
        # All idle: the tie goes to the first worker, the slow one, which stays busy.
        pending = asyncio.create_task(chat(client, "m", "first"))
        await until(lambda: slow.count == 1)
        for i in range(5):
            await chat(client, "m", str(i))
        await pending
    assert (slow.count, fast.count) == (1, 5)


async def test_max_concurrency_queues_briefly_then_answers_429(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(queue_timeout_s=0.3)
    worker = await make_worker(name="single", delay_s=0.2)
    async with gateway.client() as client:
        await register(client, seed_registration("m", worker, max_concurrency=1))
        replies = await asyncio.gather(*(chat(client, "m", str(i)) for i in range(4)))
    codes = Counter(r.status_code for r in replies)
    # One runs, one waits its turn (0.2 s < 0.3 s), the others wait too long.
    assert codes[200] >= 2 and codes[429] >= 1 and set(codes) <= {200, 429}
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert "max_concurrency" in refused.json()["msg"]


async def test_heartbeat_keeps_a_worker_and_its_lapse_removes_it_everywhere(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    first, second = await make_gateway(), await make_gateway()
    worker = await make_worker(name="beating")
    key = {"model_name": "m", "req_url_template": f"{worker.url}/api/generate"}
    async with first.client() as one, second.client() as two:
        assert (await register(one, seed_registration("m", worker, ttl_s=1))).status_code == 200
        for _ in range(6):  # 1.8 s of heartbeats, on either gateway
            beat = await two.post("/api/server/heartbeat", json=key)
            assert beat.status_code == 200 and beat.json()["ttl_s"] == 1
            await asyncio.sleep(0.3)
        assert (await chat(two, "m")).status_code == 200
        # Heartbeats stopped: the worker is reaped everywhere (the wait is only a hang guard).
        await until(lambda: _listed_nowhere(one, two), timeout_s=10)
        again = await one.post("/api/server/heartbeat", json=key)
        assert again.status_code == 404
        assert "register it again" in again.json()["msg"]


async def _listed_nowhere(*clients: httpx.AsyncClient) -> bool:
    for client in clients:
        if (await client.get("/api/server/workers")).json()["data"]:
            return False
    return True


async def test_probe_lease_is_held_by_one_gateway_at_a_time(
    make_gateway: GatewayFactory, redis: Redis, key_prefix: str
) -> None:
    from gateway.state import HEALTH

    gateways = [await make_gateway(**FAST_HEALTH) for _ in range(3)]
    lease_key = RegistryStore(redis, key_prefix).keys.probe_lease
    await until(lambda: redis.get(lease_key))
    await asyncio.sleep(0.5)
    leaders = [g for g in gateways if g.app[HEALTH].leader]
    assert len(leaders) == 1
    assert (await redis.get(lease_key)).decode() == leaders[0].app[HEALTH].lease.owner


@pytest.mark.slow
def test_probe_lease_moves_when_its_holder_process_is_killed(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    import redis as sync_redis

    env = {"GATEWAY_KEY_PREFIX": key_prefix, "GATEWAY_PROBE_LEASE_S": "1"}
    first = start(tmp_path / "a", tmp_path, "--redis-url", redis_url, env=env)
    second = start(tmp_path / "b", tmp_path, "--redis-url", redis_url, env=env)
    client = sync_redis.Redis.from_url(redis_url)
    lease_key = "{" + key_prefix + "}:probe-lease"
    try:
        holder = client.get(lease_key)
        assert holder is not None
        holder_pid = int(holder.decode().split(":")[1])
        assert holder_pid in (first.process.pid, second.process.pid)
        victim, survivor = (first, second) if holder_pid == first.process.pid else (second, first)
        victim.process.kill()
        victim.process.wait()
        deadline = time.monotonic() + 10
        new_holder = holder
        while new_holder in (holder, None) and time.monotonic() < deadline:
            time.sleep(0.1)
            new_holder = client.get(lease_key)
        assert new_holder is not None and new_holder != holder
        assert int(new_holder.decode().split(":")[1]) == survivor.process.pid
    finally:
        for served in (first, second):
            if served.process.poll() is None:
                served.process.terminate()
                served.process.wait(15)
        client.close()


async def test_workers_sharing_a_probe_target_are_probed_once_per_round(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(**{**FAST_HEALTH, "probe_rise": 2})
    server = await make_worker(name="shared")
    async with gateway.client() as client:
        for model in ("a", "b", "c"):  # one server registered under three model names
            body = seed_registration(model, server, health_url=f"{server.url}/health")
            assert (await register(client, body)).status_code == 200

        async def all_up() -> bool:
            listing = (await client.get("/api/server/workers")).json()["data"]
            return [w["health"]["state"] for w in listing] == ["up", "up", "up"]

        await until(all_up)
    probes = [r for r in server.received if r.path == "/health"]
    # Two good probes mark a worker up; three workers probed apart would need six.
    assert 2 <= len(probes) < 6
