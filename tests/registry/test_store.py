"""The Redis store: atomic writes with versions and events, duplicates, and the follower."""

import asyncio

import pytest
from redis.asyncio import Redis

from gateway.router import Router
from registry import (
    Change,
    DuplicateWorker,
    Follower,
    Health,
    ModelRecord,
    ModelSettings,
    RegistryStore,
    UnknownModelSettings,
    UnknownWorker,
    WorkerRecord,
    WorkerSpec,
)


def record(model: str = "m", url: str = "http://127.0.0.1:9/x") -> WorkerRecord:
    spec = WorkerSpec(model_name=model, req_url_template=url, body={"p": "{USER_PROMPT}"})
    return WorkerRecord.from_spec(spec)


class ListSink:
    """A minimal view that records what the follower fed it."""

    def __init__(self) -> None:
        self.version = 0
        self.records: dict[str, WorkerRecord] = {}
        self.loads = 0
        self.connected = False

    def load(
        self,
        version: int,
        records: list[WorkerRecord],
        health: dict[str, Health],
        models: list[ModelRecord],
    ) -> None:
        self.version = version
        self.records = {r.id: r for r in records}
        self.loads += 1

    def apply(self, change: Change) -> None:
        if change.op == "put" and change.record is not None:
            self.records[change.id] = change.record
        else:
            self.records.pop(change.id, None)
        self.version = change.v

    def set_connected(self, connected: bool, reason: str) -> None:
        self.connected = connected


async def test_writes_bump_the_version_and_update_the_model_index(
    redis: Redis, key_prefix: str
) -> None:
    store = RegistryStore(redis, key_prefix)
    first = await store.put(record(url="http://a/x"), replace=False)
    second = await store.put(record(url="http://b/x"), replace=False)
    assert (first.v, second.v) == (1, 2)
    assert await redis.scard(store.keys.model("m")) == 2
    gone = await store.delete("m", "http://a/x")
    assert gone.v == 3 and gone.op == "del"
    assert await redis.smembers(store.keys.model("m")) == {second.id.encode()}
    version, records, health, models = await store.snapshot()
    assert models == []
    assert health == {}
    assert version == 3
    assert [r.req_url_template for r in records] == ["http://b/x"]


async def test_duplicate_is_refused_without_any_write(redis: Redis, key_prefix: str) -> None:
    store = RegistryStore(redis, key_prefix)
    await store.put(record(), replace=False)
    with pytest.raises(DuplicateWorker, match="already registered"):
        await store.put(record(), replace=False)
    assert await store.version() == 1
    replaced = await store.put(record(), replace=True)
    assert replaced.v == 2


async def test_deleting_an_unknown_worker_raises(redis: Redis, key_prefix: str) -> None:
    store = RegistryStore(redis, key_prefix)
    with pytest.raises(UnknownWorker):
        await store.delete("m", "http://nowhere/x")
    assert await store.version() == 0


async def test_all_keys_share_one_cluster_hash_slot(redis: Redis, key_prefix: str) -> None:
    store = RegistryStore(redis, key_prefix)
    await store.put(record(), replace=False)
    keys = [k.decode() async for k in redis.scan_iter(match="{" + key_prefix + "}:*")]
    assert len(keys) == 3  # workers, the model's index, version
    assert all(k.startswith("{" + key_prefix + "}:") for k in keys)


async def wait_for(predicate: object, timeout_s: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_follower_loads_a_snapshot_then_applies_events(redis: Redis, key_prefix: str) -> None:
    store = RegistryStore(redis, key_prefix)
    await store.put(record(url="http://before/x"), replace=False)
    sink = ListSink()
    follower = Follower(store, sink, check_interval_s=0.2)
    task = asyncio.create_task(follower.run())
    try:
        await wait_for(lambda: sink.loads == 1 and sink.connected)
        assert {r.req_url_template for r in sink.records.values()} == {"http://before/x"}
        await store.put(record(url="http://after/x"), replace=False)
        await store.delete("m", "http://before/x")
        await wait_for(lambda: sink.version == 3)
        assert {r.req_url_template for r in sink.records.values()} == {"http://after/x"}
        assert sink.loads == 1  # events, not resyncs
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_follower_resyncs_when_it_missed_events(redis: Redis, key_prefix: str) -> None:
    store = RegistryStore(redis, key_prefix)
    sink = ListSink()
    follower = Follower(store, sink, check_interval_s=0.1)
    task = asyncio.create_task(follower.run())
    try:
        await wait_for(lambda: sink.loads == 1)
        # A write that publishes no event, as if the message were lost on the way.
        lost = record(url="http://lost/x")
        await redis.hset(store.keys.workers, lost.id, lost.model_dump_json())
        await redis.incr(store.keys.version)
        await wait_for(lambda: lost.id in sink.records)
        assert sink.version == 1 and sink.loads == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_model_settings_share_the_version_and_reach_followers_as_events(
    redis: Redis, key_prefix: str
) -> None:
    store = RegistryStore(redis, key_prefix)
    router = Router()
    follower = Follower(store, router, check_interval_s=0.2)
    task = asyncio.create_task(follower.run())
    name = 'org/"quoted" \\ name'  # quotes and backslashes must survive the event's JSON
    try:
        await wait_for(lambda: router.loaded)
        await store.put(record(model=name), replace=False)
        settings = ModelSettings(balancing="prefix", fallbacks=["other"])
        change = await store.put_model(ModelRecord(name=name, settings=settings))
        assert change.v == 2
        await wait_for(lambda: router.version == 2)
        assert router.settings_of(name) == settings
        assert router.source_of(name) == "api"
        pool = router.pool(name)
        assert pool is not None and type(pool.balancer).__name__ == "PrefixAffinity"

        gone = await store.delete_model(name)
        await wait_for(lambda: router.version == gone.v)
        assert router.settings_of(name) is None
        assert type(pool.balancer).__name__ == "RoundRobin"
        with pytest.raises(UnknownModelSettings):
            await store.delete_model(name)
        assert router.version == await store.version()
        snapshot = await store.snapshot()
        assert snapshot.models == [] and snapshot.version == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
