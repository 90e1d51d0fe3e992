"""The Assistants API's state in Redis: assistants, threads, their messages and runs.

Everything belongs to an owner (the API key's id, or "open" when keys are not required) whose
id is part of every key name, so another key's objects cannot even be named. Per owner, the
assistants are one hash and an order; per thread, one hash (the thread, its messages and runs,
counters) and two orders (registry/keys.py). Each write is one Lua script on keys under the
one hash tag, and refreshes the TTL of what it touched: a thread lives `ttl_s` after its last
change, the assistants `ttl_s` after the last change to any of them or run of one.

Bounds (checked in the scripts, so concurrent writers cannot pass them): assistants per owner,
messages per thread, bytes per message (its stored JSON) and per thread. One run at a time per
thread: while it is in progress (until its deadline, on the Redis clock) the thread takes no
message and no other run; runs kept per thread are as many as messages, the oldest dropped.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis

from registry.assistant_models import AssistantRecord, MessageRecord, RunRecord, ThreadRecord
from registry.errors import MessageTooLarge, NotStored, StorageFull, ThreadBusy, UnknownCursor
from registry.keys import Keys
from registry.store import guard

R = TypeVar("R", bound=BaseModel)
Order = Literal["asc", "desc"]

_ID = re.compile(r"^[a-z]{2,8}_[0-9a-f]{24}$")

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS: assistants, order. ARGV: id, JSON, max per owner, ttl ms.
_PUT_ASSISTANT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
  redis.call('ZADD', KEYS[2], redis.call('HINCRBY', KEYS[1], 'seq', 1), ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

# KEYS: assistants, order. ARGV: id, JSON, ttl ms. Only an assistant that exists.
_UPDATE_ASSISTANT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: assistants, order. ARGV: id.
_DELETE_ASSISTANT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: order, records hash. ARGV: field prefix, order (asc/desc), limit, after id ('': none),
# run id to match ('': any), whether the hash must exist ('1': else -2).
# Answers the records (up to limit + 1, which says there are more), -1 for an unknown cursor.
_PAGE = """
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
local asc, limit = ARGV[2] == 'asc', tonumber(ARGV[3])
local lo, hi = '-inf', '+inf'
if ARGV[4] ~= '' then
  local s = redis.call('ZSCORE', KEYS[1], ARGV[4])
  if not s then return -1 end
  if asc then lo = '(' .. s else hi = '(' .. s end
end
local ids
local take = limit + 1
if ARGV[5] ~= '' then take = -1 end
if asc then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], lo, hi, 'LIMIT', 0, take)
else
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], hi, lo, 'LIMIT', 0, take)
end
local out = {}
for _, id in ipairs(ids) do
  local doc = redis.call('HGET', KEYS[2], ARGV[1] .. id)
  if doc and (ARGV[5] == '' or cjson.decode(doc)['run_id'] == ARGV[5]) then
    table.insert(out, doc)
    if #out > limit then break end
  end
end
return out
"""

# Appending messages, shared by the scripts below. KEYS[1] thread hash, KEYS[2] its message
# order; `first` is the ARGV index of the first (id, JSON) pair. Answers 0 or an error code:
# -3 too many messages (counting `extra` more to come), -4 too many bytes.
_APPEND = """
local function append(first, extra, max_messages, max_bytes)
  local n = (#ARGV - first + 1) / 2
  if redis.call('ZCARD', KEYS[2]) + n + extra > max_messages then return -3 end
  local size = 0
  for i = first + 1, #ARGV, 2 do size = size + #ARGV[i] end
  if (tonumber(redis.call('HGET', KEYS[1], 'bytes')) or 0) + size > max_bytes then return -4 end
  for i = first, #ARGV, 2 do
    redis.call('HSET', KEYS[1], 'm:' .. ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[2], redis.call('HINCRBY', KEYS[1], 'seq', 1), ARGV[i])
  end
  redis.call('HINCRBY', KEYS[1], 'bytes', size)
  return 0
end
local function busy(now)
  local active = redis.call('HGET', KEYS[1], 'active')
  return active and (tonumber(redis.call('HGET', KEYS[1], 'active_until')) or 0) > now
end
local function touch(ttl)
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS: thread, messages, runs. ARGV: thread JSON, ttl ms, max messages, max bytes, then
# (id, JSON) per message.
_CREATE_THREAD = (
    _APPEND
    + """
if redis.call('HSETNX', KEYS[1], 'thread', ARGV[1]) == 0 then return -5 end
local code = append(5, 0, tonumber(ARGV[3]), tonumber(ARGV[4]))
if code ~= 0 then redis.call('DEL', KEYS[1], KEYS[2]) return code end
touch(ARGV[2])
return 0
"""
)

# KEYS: thread, messages, runs. ARGV: ttl ms, max messages, max bytes, then (id, JSON) pairs.
# Answers 0, -1 no thread, -2 a run is in progress, or append's code.
_ADD_MESSAGES = (
    _APPEND
    + _NOW_MS
    + """
if redis.call('HEXISTS', KEYS[1], 'thread') == 0 then return -1 end
if busy(now) then return -2 end
local code = append(4, 0, tonumber(ARGV[2]), tonumber(ARGV[3]))
if code ~= 0 then return code end
touch(ARGV[1])
return 0
"""
)

# KEYS: thread, messages, runs, assistants, assistant order. ARGV: ttl ms, max messages, max
# bytes, run id, run JSON, run deadline (ms from now), max runs kept, then (id, JSON) per
# message added with the run. Room is kept for the answer. Answers as _ADD_MESSAGES.
_START_RUN = (
    _APPEND
    + _NOW_MS
    + """
if redis.call('HEXISTS', KEYS[1], 'thread') == 0 then return -1 end
if busy(now) then return -2 end
local code = append(8, 1, tonumber(ARGV[2]), tonumber(ARGV[3]))
if code ~= 0 then return code end
redis.call('HSET', KEYS[1], 'active', ARGV[4], 'active_until', now + tonumber(ARGV[6]),
  'r:' .. ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[3], redis.call('HINCRBY', KEYS[1], 'rseq', 1), ARGV[4])
while redis.call('ZCARD', KEYS[3]) > tonumber(ARGV[7]) do
  local oldest = redis.call('ZPOPMIN', KEYS[3])
  redis.call('HDEL', KEYS[1], 'r:' .. oldest[1])
end
touch(ARGV[1])
return 0
"""
)

# KEYS: thread, messages, runs. ARGV: ttl ms, max messages, max bytes, run id, run JSON,
# '1' to end the run (the thread is free again), then the (id, JSON) of its answer, if any.
# Answers 0, -1 no such run (the thread was deleted), or append's code.
_UPDATE_RUN = (
    _APPEND
    + """
if redis.call('HEXISTS', KEYS[1], 'r:' .. ARGV[4]) == 0 then return -1 end
if #ARGV > 6 then
  local code = append(7, 0, tonumber(ARGV[2]), tonumber(ARGV[3]))
  if code ~= 0 then return code end
end
redis.call('HSET', KEYS[1], 'r:' .. ARGV[4], ARGV[5])
if ARGV[6] == '1' and redis.call('HGET', KEYS[1], 'active') == ARGV[4] then
  redis.call('HDEL', KEYS[1], 'active', 'active_until')
end
touch(ARGV[1])
return 0
"""
)


@dataclass(frozen=True, slots=True)
class AssistantLimits:
    """How much state one owner may keep, and for how long (docs/api.md#assistants)."""

    ttl_s: float
    max_assistants: int  # per owner
    max_messages: int  # per thread (also the runs kept per thread)
    max_message_bytes: int  # a message's stored JSON
    max_thread_bytes: int  # all of a thread's messages


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, in the order asked for."""

    items: list[bytes]
    has_more: bool


def valid_id(value: str) -> bool:
    """Whether `value` has the shape of an id this store makes (others cannot be stored)."""
    return bool(_ID.match(value))


class AssistantStore:
    """Assistants, threads, messages and runs of each owner, in one Redis."""

    def __init__(self, redis: Redis, prefix: str, limits: AssistantLimits) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.limits = limits
        self._ttl_ms = max(1, int(limits.ttl_s * 1000))
        self._put_assistant = redis.register_script(_PUT_ASSISTANT)
        self._update_assistant = redis.register_script(_UPDATE_ASSISTANT)
        self._delete_assistant = redis.register_script(_DELETE_ASSISTANT)
        self._page = redis.register_script(_PAGE)
        self._create_thread = redis.register_script(_CREATE_THREAD)
        self._add_messages = redis.register_script(_ADD_MESSAGES)
        self._start_run = redis.register_script(_START_RUN)
        self._update_run = redis.register_script(_UPDATE_RUN)

    # Assistants

    async def create_assistant(self, owner: str, record: AssistantRecord) -> None:
        """Store a new assistant; raise StorageFull past the owner's max."""
        keys = [self.keys.assistants(owner), self.keys.assistant_order(owner)]
        args: list[str | int] = [
            record.id,
            self._sized(record),
            self.limits.max_assistants,
            self._ttl_ms,
        ]
        if await guard(lambda: self._put_assistant(keys=keys, args=args)) == -1:
            raise StorageFull(
                f"this API key already has {self.limits.max_assistants} assistants "
                "(assistants_max_per_key); delete some first"
            )

    async def assistant(self, owner: str, assistant_id: str) -> AssistantRecord:
        """Return the owner's assistant; raise NotStored when there is none."""
        raw = None
        if valid_id(assistant_id):
            key = self.keys.assistants(owner)
            raw = await guard(lambda: self.redis.hget(key, assistant_id))
        if raw is None:
            raise NotStored(f"no assistant {assistant_id!r}; GET /v1/assistants lists them")
        return AssistantRecord.model_validate_json(raw)

    async def update_assistant(self, owner: str, record: AssistantRecord) -> None:
        """Replace an existing assistant; raise NotStored when it is gone."""
        keys = [self.keys.assistants(owner), self.keys.assistant_order(owner)]
        args: list[str | int] = [record.id, self._sized(record), self._ttl_ms]
        if not await guard(lambda: self._update_assistant(keys=keys, args=args)):
            raise NotStored(f"no assistant {record.id!r}; GET /v1/assistants lists them")

    async def delete_assistant(self, owner: str, assistant_id: str) -> bool:
        """Delete the owner's assistant; return whether there was one."""
        if not valid_id(assistant_id):
            return False
        keys = [self.keys.assistants(owner), self.keys.assistant_order(owner)]
        return bool(await guard(lambda: self._delete_assistant(keys=keys, args=[assistant_id])))

    async def assistants(
        self, owner: str, *, order: Order, limit: int, after: str | None
    ) -> tuple[list[AssistantRecord], bool]:
        """One page of the owner's assistants, and whether there are more."""
        keys = [self.keys.assistant_order(owner), self.keys.assistants(owner)]
        page = await self._list(keys, "", order, limit, after, "", "assistant")
        return _parsed(AssistantRecord, page.items), page.has_more

    # Threads and messages

    async def create_thread(
        self, owner: str, thread: ThreadRecord, messages: Sequence[MessageRecord]
    ) -> None:
        """Store a new thread with its first messages; raise StorageFull past the limits."""
        limits = self.limits
        args: list[str | int] = [
            thread.model_dump_json(),
            self._ttl_ms,
            limits.max_messages,
            limits.max_thread_bytes,
        ]
        args += self._pairs(messages)
        code = await guard(
            lambda: self._create_thread(keys=self._thread_keys(owner, thread.id), args=args)
        )
        self._check(code, thread.id)

    async def thread(self, owner: str, thread_id: str) -> ThreadRecord:
        """Return the owner's thread; raise NotStored when there is none."""
        raw = await self._field(owner, thread_id, "thread")
        if raw is None:
            raise NotStored(f"no thread {thread_id!r}; threads expire after assistants_ttl_s")
        return ThreadRecord.model_validate_json(raw)

    async def update_thread(self, owner: str, thread: ThreadRecord) -> None:
        """Replace the thread's own record (its metadata)."""
        keys = self._thread_keys(owner, thread.id)
        await self.thread(owner, thread.id)  # NotStored when it is gone

        async def write() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(keys[0], "thread", thread.model_dump_json())
                for key in keys:
                    pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()

        await guard(write)

    async def delete_thread(self, owner: str, thread_id: str) -> bool:
        """Delete the thread with its messages and runs; return whether there was one."""
        if not valid_id(thread_id):
            return False
        keys = self._thread_keys(owner, thread_id)
        return bool(await guard(lambda: self.redis.delete(*keys)))

    async def add_messages(
        self, owner: str, thread_id: str, messages: Sequence[MessageRecord]
    ) -> None:
        """Append messages; raise NotStored, ThreadBusy or StorageFull."""
        if not valid_id(thread_id):
            self._check(-1, thread_id)
        limits = self.limits
        args: list[str | int] = [self._ttl_ms, limits.max_messages, limits.max_thread_bytes]
        args += self._pairs(messages)
        keys = self._thread_keys(owner, thread_id)
        self._check(await guard(lambda: self._add_messages(keys=keys, args=args)), thread_id)

    async def message(self, owner: str, thread_id: str, message_id: str) -> MessageRecord:
        """Return one message of the thread; raise NotStored when there is none."""
        raw = await self._field(owner, thread_id, "m:" + message_id, message_id)
        if raw is None:
            raise NotStored(f"no message {message_id!r} in thread {thread_id!r}")
        return MessageRecord.model_validate_json(raw)

    async def messages(
        self,
        owner: str,
        thread_id: str,
        *,
        order: Order = "asc",
        limit: int | None = None,
        after: str | None = None,
        run_id: str | None = None,
    ) -> tuple[list[MessageRecord], bool]:
        """A page of the thread's messages (all of them without a limit), and whether there
        are more; raise NotStored when there is no such thread."""
        if not valid_id(thread_id):
            self._check(-1, thread_id)
        thread, messages, _ = self._thread_keys(owner, thread_id)
        size = self.limits.max_messages if limit is None else limit
        page = await self._list(
            [messages, thread], "m:", order, size, after, run_id or "", "message", thread_id
        )
        return _parsed(MessageRecord, page.items), page.has_more

    # Runs

    async def start_run(
        self,
        owner: str,
        run: RunRecord,
        messages: Sequence[MessageRecord],
        *,
        deadline_s: float,
    ) -> None:
        """Store a run as the thread's one in progress, with the messages it adds; raise
        NotStored, ThreadBusy or StorageFull (no room for its answer)."""
        limits = self.limits
        keys = [
            *self._thread_keys(owner, run.thread_id),
            self.keys.assistants(owner),
            self.keys.assistant_order(owner),
        ]
        args: list[str | int] = [
            self._ttl_ms,
            limits.max_messages,
            limits.max_thread_bytes,
            run.id,
            run.model_dump_json(),
            max(1, int(deadline_s * 1000)),
            limits.max_messages,
        ]
        args += self._pairs(messages)
        self._check(await guard(lambda: self._start_run(keys=keys, args=args)), run.thread_id)

    async def update_run(
        self, owner: str, run: RunRecord, *, done: bool, answer: MessageRecord | None = None
    ) -> None:
        """Store a run's new state (and its answer, when it is done); the thread takes messages
        and runs again once `done`. Raise NotStored when the thread is gone."""
        limits = self.limits
        args: list[str | int] = [
            self._ttl_ms,
            limits.max_messages,
            limits.max_thread_bytes,
            run.id,
            run.model_dump_json(),
            "1" if done else "0",
        ]
        if answer is not None:
            args += self._pairs([answer])
        keys = self._thread_keys(owner, run.thread_id)
        self._check(await guard(lambda: self._update_run(keys=keys, args=args)), run.thread_id)

    async def run(self, owner: str, thread_id: str, run_id: str) -> RunRecord:
        """Return one run of the thread; raise NotStored when there is none."""
        raw = await self._field(owner, thread_id, "r:" + run_id, run_id)
        if raw is None:
            raise NotStored(f"no run {run_id!r} in thread {thread_id!r}")
        return RunRecord.model_validate_json(raw)

    async def runs(
        self, owner: str, thread_id: str, *, order: Order, limit: int, after: str | None
    ) -> tuple[list[RunRecord], bool]:
        """One page of the thread's runs, and whether there are more."""
        if not valid_id(thread_id):
            self._check(-1, thread_id)
        thread, _, runs = self._thread_keys(owner, thread_id)
        page = await self._list([runs, thread], "r:", order, limit, after, "", "run", thread_id)
        return _parsed(RunRecord, page.items), page.has_more

    # Helpers

    def _thread_keys(self, owner: str, thread_id: str) -> list[str]:
        k = self.keys
        return [
            k.thread(owner, thread_id),
            k.thread_messages(owner, thread_id),
            k.thread_runs(owner, thread_id),
        ]

    async def _field(
        self, owner: str, thread_id: str, field: str, object_id: str | None = None
    ) -> bytes | None:
        if not valid_id(thread_id) or (object_id is not None and not valid_id(object_id)):
            return None
        key = self.keys.thread(owner, thread_id)
        raw = await guard(lambda: self.redis.hget(key, field))
        return raw.encode() if isinstance(raw, str) else raw

    async def _list(
        self,
        keys: list[str],
        prefix: str,
        order: Order,
        limit: int,
        after: str | None,
        run_id: str,
        what: str,
        thread_id: str | None = None,
    ) -> Page:
        if after is not None and not valid_id(after):
            raise UnknownCursor(f"after={after!r} names no {what} of this list")
        args: list[str | int] = [
            prefix,
            order,
            limit,
            after or "",
            run_id,
            "1" if thread_id else "0",
        ]
        found = await guard(lambda: self._page(keys=keys, args=args))
        if found == -1:
            raise UnknownCursor(f"after={after!r} names no {what} of this list")
        if found == -2:
            self._check(-1, thread_id or "")
        return Page(found[:limit], len(found) > limit)

    def _pairs(self, messages: Sequence[MessageRecord]) -> list[str | int]:
        out: list[str | int] = []
        for message in messages:
            out += [message.id, self._sized(message)]
        return out

    def _sized(self, record: BaseModel) -> str:
        """The record's JSON; raise MessageTooLarge past max_message_bytes."""
        doc = record.model_dump_json()
        size, limit = len(doc.encode()), self.limits.max_message_bytes
        if size > limit:
            what = "an assistant" if isinstance(record, AssistantRecord) else "a message"
            raise MessageTooLarge(
                f"{what} of {size} bytes (as stored) is larger than the {limit} bytes one may "
                "have (assistants_max_message_bytes); make it shorter"
            )
        return doc

    def _check(self, code: int, thread_id: str) -> None:
        limits = self.limits
        if code == -1:
            raise NotStored(f"no thread {thread_id!r}; threads expire after assistants_ttl_s")
        if code == -2:
            raise ThreadBusy(
                f"thread {thread_id!r} has a run in progress; wait for it to end (poll GET "
                "/v1/threads/{thread_id}/runs/{run_id}) before adding messages or runs"
            )
        if code == -3:
            raise StorageFull(
                f"thread {thread_id!r} would hold more than {limits.max_messages} messages "
                "(assistants_max_messages); start a new thread"
            )
        if code == -4:
            raise StorageFull(
                f"thread {thread_id!r} would hold more than {limits.max_thread_bytes} bytes "
                "of messages (assistants_max_thread_bytes); start a new thread"
            )
        if code == -5:
            raise StorageFull(f"thread {thread_id!r} exists already")


def _parsed(model: type[R], items: list[bytes]) -> list[R]:
    return [model.model_validate_json(raw) for raw in items]
