"""The Assistants store: bounds kept under concurrent writers, one run per thread, TTLs on
every key, and an owner's objects out of another owner's reach."""

import asyncio

import pytest
from redis.asyncio import Redis

from registry import (
    AssistantLimits,
    AssistantRecord,
    AssistantStore,
    MessageRecord,
    MessageTooLarge,
    NotStored,
    RunChanged,
    RunRecord,
    StorageFull,
    ThreadBusy,
    ThreadRecord,
    new_id,
)

LIMITS = AssistantLimits(
    ttl_s=3600,
    max_assistants=5,
    max_messages=10,
    max_message_bytes=4096,
    max_thread_bytes=64 * 1024,
)


@pytest.fixture
def store(redis: Redis, key_prefix: str) -> AssistantStore:
    return AssistantStore(redis, key_prefix, LIMITS)


def message(thread_id: str, text: str = "hi") -> MessageRecord:
    content = [{"type": "text", "text": {"value": text, "annotations": []}}]
    return MessageRecord(
        id=new_id("msg"), created_at=1, thread_id=thread_id, role="user", content=content
    )


async def new_thread(store: AssistantStore, owner: str = "a") -> str:
    thread = ThreadRecord(id=new_id("thread"), created_at=1)
    await store.create_thread(owner, thread, [])
    return thread.id


def run_of(thread_id: str) -> RunRecord:
    return RunRecord(
        id=new_id("run"), created_at=1, thread_id=thread_id, assistant_id="asst_x", model="m"
    )


async def test_concurrent_writers_never_pass_the_message_bound(store: AssistantStore) -> None:
    thread_id = await new_thread(store)
    results = await asyncio.gather(
        *(store.add_messages("a", thread_id, [message(thread_id, str(i))]) for i in range(25)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == LIMITS.max_messages
    assert all(isinstance(r, StorageFull) for r in results if r is not None)
    found, more = await store.messages("a", thread_id)
    assert len(found) == LIMITS.max_messages and not more


async def test_concurrent_assistants_never_pass_the_owner_bound(store: AssistantStore) -> None:
    records = [AssistantRecord(id=new_id("asst"), created_at=1, model="m") for _ in range(12)]
    results = await asyncio.gather(
        *(store.create_assistant("a", r) for r in records), return_exceptions=True
    )
    assert sum(r is None for r in results) == LIMITS.max_assistants
    found, _ = await store.assistants("a", order="asc", limit=100, after=None)
    assert len(found) == LIMITS.max_assistants


async def test_one_run_at_a_time_per_thread(store: AssistantStore) -> None:
    thread_id = await new_thread(store)
    runs = [run_of(thread_id) for _ in range(6)]
    results = await asyncio.gather(
        *(store.start_run("a", r, [], deadline_s=60) for r in runs), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, ThreadBusy) for r in results if r is not None)
    started = runs[results.index(None)]
    with pytest.raises(ThreadBusy):
        await store.add_messages("a", thread_id, [message(thread_id)])
    # Only one request can move a run on from a state (the others are told it changed).
    moved = started.model_copy(update={"status": "in_progress"})
    await store.update_run("a", moved, thread="keep", expect="queued")
    with pytest.raises(RunChanged):
        await store.update_run("a", moved, thread="keep", expect="queued")
    done = moved.model_copy(update={"status": "completed"})
    await store.update_run("a", done, thread="end", answer=message(thread_id, "answer"))
    await store.add_messages("a", thread_id, [message(thread_id)])  # free again
    assert (await store.run("a", thread_id, started.id)).status == "completed"


async def test_a_run_past_its_deadline_frees_its_thread(store: AssistantStore) -> None:
    thread_id = await new_thread(store)
    await store.start_run("a", run_of(thread_id), [], deadline_s=0.001)
    await asyncio.sleep(0.01)  # the deadline is on the Redis clock, a millisecond away
    await store.start_run("a", run_of(thread_id), [], deadline_s=60)


async def test_every_key_expires_and_delete_leaves_none(
    store: AssistantStore, redis: Redis, key_prefix: str
) -> None:
    thread_id = await new_thread(store)
    await store.add_messages("a", thread_id, [message(thread_id)])
    await store.start_run("a", run_of(thread_id), [], deadline_s=60)
    await store.create_assistant("a", AssistantRecord(id=new_id("asst"), created_at=1, model="m"))
    keys = [key async for key in redis.scan_iter(match="{" + key_prefix + "}:*")]
    assert len(keys) == 5  # the thread, its two orders, the assistants and their order
    for key in keys:
        assert 0 < await redis.pttl(key) <= LIMITS.ttl_s * 1000, key
    assert await store.delete_thread("a", thread_id)
    left = [key async for key in redis.scan_iter(match="{" + key_prefix + "}:thread*")]
    assert left == []


async def test_owners_and_ids_are_kept_apart(store: AssistantStore) -> None:
    thread_id = await new_thread(store, owner="a")
    with pytest.raises(NotStored):
        await store.thread("b", thread_id)
    with pytest.raises(NotStored):
        await store.add_messages("b", thread_id, [message(thread_id)])
    with pytest.raises(NotStored):
        await store.thread("a", thread_id + ":x")  # not an id this store makes
    assert not await store.delete_thread("b", thread_id)
    assert (await store.thread("a", thread_id)).id == thread_id


async def test_sizes_are_bounded(store: AssistantStore) -> None:
    thread_id = await new_thread(store)
    with pytest.raises(MessageTooLarge):
        await store.add_messages("a", thread_id, [message(thread_id, "x" * 5000)])
    # Messages of ~3.7 KiB each fit the bytes per message; the fifth passes 16 KiB per thread.
    small = AssistantLimits(3600, 5, 100, 4096, 16 * 1024)
    tight = AssistantStore(store.redis, store.keys.prefix, small)
    for _ in range(4):
        await tight.add_messages("a", thread_id, [message(thread_id, "y" * 3500)])
    with pytest.raises(StorageFull) as full:
        await tight.add_messages("a", thread_id, [message(thread_id, "y" * 3500)])
    assert "assistants_max_thread_bytes" in str(full.value)
