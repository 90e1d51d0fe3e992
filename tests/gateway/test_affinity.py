"""Prefix and session affinity (`balancing = "prefix"`): same start, same worker, everywhere."""

import asyncio
from typing import Any

import httpx

from gateway.observe import MODEL_HEADER
from tests.conftest import GatewayFactory, WorkerFactory
from tests.gateway.test_fallbacks import chat, put_model
from tests.gateway.test_health import until
from tests.gateway.test_seed_api import register, seed_registration
from tests.workers import FakeWorker

PREFIX_CHARS = 64


def prefix(index: int) -> str:
    """A prompt start longer than PREFIX_CHARS, unique to `index`."""
    return f"document {index:04d}: " + "lorem ipsum dolor sit amet " * 3


def worker_of(workers: list[FakeWorker], text: str) -> str:
    """The name of the worker whose answer `text` was (the fake ones answer "name: prompt")."""
    name = text.partition(":")[0]
    assert name in {w.name for w in workers}, text
    return name


async def setup(http: httpx.AsyncClient, workers: list[FakeWorker], **settings: Any) -> None:
    for worker in workers:
        assert (await register(http, seed_registration("m", worker))).status_code == 200
    options = {"balancing": "prefix", "prefix_chars": PREFIX_CHARS, **settings}
    assert (await put_model(http, "m", **options)).status_code == 200


async def placed(http: httpx.AsyncClient, workers: list[FakeWorker], text: str) -> str:
    reply = await chat(http, "m", text)
    assert reply.status_code == 200, reply.text
    assert reply.headers[MODEL_HEADER] == "m"
    return worker_of(workers, reply.json()["result"])


async def test_each_prefix_stays_on_one_worker_in_two_gateways(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    first, second = await make_gateway(), await make_gateway()
    workers = [await make_worker(name=f"w{i}") for i in range(4)]
    async with first.client() as a, second.client() as b:
        await setup(a, workers)
        await until(lambda: _balanced_by_prefix(b))
        where: dict[int, set[str]] = {}
        for index in range(20):
            for turn in range(6):
                http = (a, b)[turn % 2]
                text = prefix(index) + f" question {turn}?"
                where.setdefault(index, set()).add(await placed(http, workers, text))
        assert all(len(names) == 1 for names in where.values()), where
        used = {name for names in where.values() for name in names}
        assert len(used) >= 3  # 20 prefixes spread over the pool, not all on one worker
        assert max(w.peak for w in workers) == 1  # one at a time: no worker over its bound


async def _balanced_by_prefix(http: httpx.AsyncClient) -> bool:
    reply = await http.get("/api/server/models/m")
    return reply.status_code == 200 and reply.json()["data"]["balancing"] == "prefix"


async def test_every_turn_of_a_conversation_goes_to_the_same_worker(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    workers = [await make_worker(name=f"w{i}") for i in range(4)]
    async with gateway.client() as http:
        await setup(http, workers, prefix_chars=1024)
        seen: dict[int, set[str]] = {}
        for conversation in range(8):
            messages: list[dict[str, str]] = [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"conversation {conversation}: hello"},
            ]
            for turn in range(4):
                body = {"model": "m", "messages": messages}
                # Seed workers answer "name: prompt" for the last user message.
                reply = await http.post("/v1/chat/completions", json=body)
                assert reply.status_code == 200, reply.text
                text = reply.json()["choices"][0]["message"]["content"]
                seen.setdefault(conversation, set()).add(worker_of(workers, text))
                messages += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"and turn {turn}?"},
                ]
        assert all(len(names) == 1 for names in seen.values()), seen
        assert len({n for names in seen.values() for n in names}) >= 2


async def test_session_header_and_openai_user_pin_a_worker(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    workers = [await make_worker(name=f"w{i}") for i in range(4)]
    async with gateway.client() as http:
        await setup(http, workers)
        for session in ("alice", "bob", "carol"):
            names = set()
            for turn in range(5):
                headers = {"X-Session-ID": session}
                reply = await chat(http, "m", f"unrelated prompt {turn}", **headers)
                names.add(worker_of(workers, reply.json()["result"]))
            assert len(names) == 1
        for user in ("u1", "u2"):
            names = set()
            for turn in range(5):
                messages = [{"role": "user", "content": f"{turn}"}]
                body = {"model": "m", "user": user, "messages": messages}
                reply = await http.post("/v1/chat/completions", json=body)
                names.add(worker_of(workers, reply.json()["choices"][0]["message"]["content"]))
            assert len(names) == 1


async def test_a_hot_prefix_spills_over_within_the_load_bound(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    workers = [await make_worker(name=f"w{i}", delay_s=0.3) for i in range(4)]
    async with gateway.client() as http:
        await setup(http, workers, min_spill_load=2, max_load_ratio=1.25)
        text = prefix(7) + " same question"
        home = await placed(http, workers, text)
        replies = await asyncio.gather(*(chat(http, "m", text) for _ in range(16)))
        names = [worker_of(workers, r.json()["result"]) for r in replies]
        # With 16 at once the bound is max(2, ceil(1.25 * 16 / 4)) = 5 on every worker.
        assert max(w.peak for w in workers) <= 5
        assert len(set(names)) >= 3
        assert names.count(home) == max(names.count(n) for n in set(names))
        # Once the rush is over, the prefix is back on its own worker.
        assert {await placed(http, workers, text) for _ in range(4)} == {home}


async def test_adding_or_removing_a_worker_moves_only_its_share(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    workers = [await make_worker(name=f"w{i}") for i in range(4)]
    keys = range(200)
    async with gateway.client() as http:
        await setup(http, workers)
        before = {k: await placed(http, workers, prefix(k)) for k in keys}

        joined = await make_worker(name="w4")
        workers.append(joined)
        await register(http, seed_registration("m", joined))
        after = {k: await placed(http, workers, prefix(k)) for k in keys}
        moved = [k for k in keys if after[k] != before[k]]
        assert all(after[k] == "w4" for k in moved)  # every moved prefix went to the newcomer
        assert 0.1 <= len(moved) / len(keys) <= 0.3  # about 1/5 of them

        leaving = workers[1]
        gone = await http.post(
            "/api/server/offline",
            json={"model_name": "m", "req_url_template": f"{leaving.url}/api/generate"},
        )
        assert gone.status_code == 200
        last = {k: await placed(http, workers, prefix(k)) for k in keys}
        assert all(last[k] == after[k] for k in keys if after[k] != leaving.name)
        assert all(last[k] != leaving.name for k in keys)
