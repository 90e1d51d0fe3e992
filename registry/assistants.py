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

from registry import assistant_scripts as scripts
from registry.assistant_models import AssistantRecord, MessageRecord, RunRecord, ThreadRecord
from registry.errors import (
    MessageTooLarge,
    NotStored,
    RunChanged,
    StorageFull,
    ThreadBusy,
    UnknownCursor,
)
from registry.keys import Keys
from registry.store import guard

R = TypeVar("R", bound=BaseModel)
Order = Literal["asc", "desc"]

_ID = re.compile(r"^[a-z]{2,8}_[0-9a-f]{24}$")


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
        self._put_assistant = redis.register_script(scripts.PUT_ASSISTANT)
        self._update_assistant = redis.register_script(scripts.UPDATE_ASSISTANT)
        self._delete_assistant = redis.register_script(scripts.DELETE_ASSISTANT)
        self._page = redis.register_script(scripts.PAGE)
        self._create_thread = redis.register_script(scripts.CREATE_THREAD)
        self._add_messages = redis.register_script(scripts.ADD_MESSAGES)
        self._start_run = redis.register_script(scripts.START_RUN)
        self._update_run = redis.register_script(scripts.UPDATE_RUN)
        self._update_thread = redis.register_script(scripts.UPDATE_THREAD)

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
        """Replace the thread's own record (its metadata); raise NotStored when it is gone."""
        keys = self._thread_keys(owner, thread.id)
        args: list[str | int] = [thread.model_dump_json(), self._ttl_ms]
        self._check(await guard(lambda: self._update_thread(keys=keys, args=args)), thread.id)

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
            self._sized(run),
            max(1, int(deadline_s * 1000)),
            limits.max_messages,
        ]
        args += self._pairs(messages)
        self._check(await guard(lambda: self._start_run(keys=keys, args=args)), run.thread_id)

    async def update_run(
        self,
        owner: str,
        run: RunRecord,
        *,
        thread: float | Literal["end", "keep"],
        expect: str = "",
        answer: MessageRecord | None = None,
    ) -> None:
        """Store a run's new state, with a message it adds. `thread` says what becomes of its
        thread: free again ("end"), still the run's ("keep"), or the run's for that many more
        seconds. With `expect`, the run must have that status now, else RunChanged. Raise
        NotStored when the thread is gone."""
        limits = self.limits
        mode = thread if isinstance(thread, str) else str(max(1, int(thread * 1000)))
        args: list[str | int] = [
            self._ttl_ms,
            limits.max_messages,
            limits.max_thread_bytes,
            run.id,
            self._sized(run),
            mode,
            expect,
        ]
        if answer is not None:
            args += self._pairs([answer])
        keys = self._thread_keys(owner, run.thread_id)
        code = await guard(lambda: self._update_run(keys=keys, args=args))
        if code == -6:
            raise RunChanged(
                f"run {run.id!r} is no longer {expect}: another request changed it first; "
                "GET it for its status"
            )
        self._check(code, run.thread_id)

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
        """The record's JSON; raise MessageTooLarge past its bound: max_message_bytes for a
        message or an assistant, max_thread_bytes for a run (its instructions, calls and
        outputs)."""
        doc = record.model_dump_json()
        size = len(doc.encode())
        if isinstance(record, RunRecord):
            limit, what, setting = self.limits.max_thread_bytes, "a run", "thread"
        else:
            limit, setting = self.limits.max_message_bytes, "message"
            what = "an assistant" if isinstance(record, AssistantRecord) else "a message"
        if size > limit:
            raise MessageTooLarge(
                f"{what} of {size} bytes (as stored) is larger than the {limit} bytes one may "
                f"have (assistants_max_{setting}_bytes); make it shorter"
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
