"""Running an Assistants run: the thread to a model's pool and its answer back to the thread.

A run goes the way of any request: the assistant's instructions and the thread's messages
become a `Conversation`, sent as a `Call` through the failover loop (gateway/failover.py) to
the model's pool, so balancing, failover, worker limits and timeouts apply; it is never passed
through, whatever the worker speaks. The answer is appended to the thread as the assistant's
message, and the run ends completed, incomplete (the answer was cut at
`max_completion_tokens`) or failed with `last_error`.

A run created without `stream` runs as a task in this process and its create call answers at
once with the run queued, as OpenAI's does: the client polls `GET .../runs/{id}`, which any
replica answers from Redis, and a run neither ties its client's connection up for the length
of a generation nor ends when that connection does. The run's deadline (the request timeout
and a margin) is stored with it: if this process dies mid-run, readers see it expired after
that and the thread takes new runs. Tasks still running at shutdown end as failed. A streamed
run runs inside its request: the stream is its answer; a client that leaves cancels it.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, Literal

import orjson
from aiohttp import web

from gateway.calls import Call
from gateway.errors import GatewayError
from gateway.failover import Failover
from gateway.pool import Pool
from gateway.stream import StreamBroken
from registry import (
    AssistantStore,
    LastError,
    MessageRecord,
    MessageTooLarge,
    NotStored,
    RegistryError,
    RunRecord,
    RunUsage,
    StorageFull,
)
from templates.conversation import (
    Conversation,
    Finish,
    Image,
    Message,
    Params,
    Part,
    Reply,
    Text,
    TextDelta,
    Tool,
    Usage,
    UsageReport,
)

log = logging.getLogger(__name__)

# Beyond the request timeout, the time a run may take to be stored before it counts as lost.
_DEADLINE_MARGIN_S = 30.0
# Told to polling clients (the SDK's create_and_poll reads it), instead of its 1 s default.
POLL_AFTER_MS = 250


def now() -> int:
    return int(time.time())


def conversation(run: RunRecord, messages: list[MessageRecord], *, stream: bool) -> Conversation:
    """The conversation a run sends: its instructions, then the thread's messages."""
    turns: list[Message] = []
    if run.instructions:
        turns.append(Message("system", run.instructions))
    strategy = run.truncation_strategy
    last = strategy.get("last_messages")
    if strategy.get("type") == "last_messages" and isinstance(last, int) and last > 0:
        messages = messages[-last:]
    for message in messages:
        parts: list[Part] = []
        for part in message.content:
            if part.get("type") == "text":
                parts.append(Text(str(part["text"]["value"])))
            elif part.get("type") == "image_url":
                parts.append(Image(str(part["image_url"]["url"])))
        only_text = all(isinstance(p, Text) for p in parts)
        content = message.text if only_text else tuple(parts)
        turns.append(Message(message.role, content))
    fmt = run.response_format
    params = Params(
        temperature=run.temperature,
        top_p=run.top_p,
        max_tokens=run.max_completion_tokens,
        response_format=fmt if isinstance(fmt, dict) and fmt.get("type") != "text" else None,
    )
    tools = tuple(
        Tool(f["name"], f.get("description"), f.get("parameters"))
        for f in (t["function"] for t in run.tools if t.get("type") == "function")
    )
    choice = run.tool_choice
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name")
    return Conversation(
        tuple(turns),
        params,
        tools,
        choice if isinstance(choice, str) and tools else None,
        include_usage=stream,
    )


def answer_message(run: RunRecord, message_id: str) -> MessageRecord:
    """The assistant's message a run writes, before any of its text has come."""
    return MessageRecord(
        id=message_id,
        created_at=now(),
        thread_id=run.thread_id,
        role="assistant",
        content=[],
        status="in_progress",
        assistant_id=run.assistant_id,
        run_id=run.id,
    )


def ended(run: RunRecord, message: MessageRecord, reply: Reply) -> tuple[RunRecord, MessageRecord]:
    """The run and its message once the whole answer is in."""
    at = now()
    content = [{"type": "text", "text": {"value": reply.text, "annotations": []}}]
    usage = _usage(reply.usage)
    if reply.finish == "length":
        return (
            run.model_copy(
                update={
                    "status": "incomplete",
                    "incomplete_details": {"reason": "max_completion_tokens"},
                    "usage": usage,
                }
            ),
            message.model_copy(
                update={
                    "content": content,
                    "status": "incomplete",
                    "incomplete_at": at,
                    "incomplete_details": {"reason": "max_tokens"},
                }
            ),
        )
    return (
        run.model_copy(update={"status": "completed", "completed_at": at, "usage": usage}),
        message.model_copy(update={"content": content, "status": "completed", "completed_at": at}),
    )


def failed(run: RunRecord, error: Exception) -> RunRecord:
    """The run ended by `error` (the gateway's, the worker's, or a stored limit's)."""
    status = error.status if isinstance(error, GatewayError) else 500
    code: Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]
    if status == 429:
        code = "rate_limit_exceeded"
    elif 400 <= status < 500 or isinstance(error, RegistryError):
        code = "invalid_prompt"
    else:
        code = "server_error"
    return run.model_copy(
        update={
            "status": "failed",
            "failed_at": now(),
            "last_error": LastError(code=code, message=str(error)),
        }
    )


def _usage(usage: Usage | None) -> RunUsage | None:
    if usage is None:
        return None
    return RunUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def event(name: str, data: Any) -> bytes:
    """One server-sent event of an Assistants stream."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


DONE = b"event: done\ndata: [DONE]\n\n"


class Runner:
    """Runs the runs this process started, and ends those still running at shutdown."""

    def __init__(self, store: AssistantStore, failover: Failover, *, request_timeout_s: float):
        self._store = store
        self._failover = failover
        self.deadline_s = request_timeout_s + _DEADLINE_MARGIN_S
        self._tasks: set[asyncio.Task[None]] = set()

    def new_run(self, **fields: Any) -> RunRecord:
        """A queued run, with the deadline after which readers count it as lost."""
        created = now()
        return RunRecord(created_at=created, expires_at=created + int(self.deadline_s), **fields)

    def start(
        self, owner: str, run: RunRecord, pool: Pool, message_id: str, request_id: str
    ) -> None:
        """Run `run` (already stored, queued) as a task of this process."""
        task = asyncio.create_task(
            self._run(owner, run, pool, message_id, request_id), name=f"assistants-{run.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel the runs still in progress; each stores itself as failed."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(
        self, owner: str, run: RunRecord, pool: Pool, message_id: str, request_id: str
    ) -> None:
        store = self._store
        try:
            try:
                run = await self.begin(owner, run)
                messages, _ = await store.messages(owner, run.thread_id)
                call = self.call(run, messages, stream=False, request_id=request_id)
                async with asyncio.timeout(self.deadline_s):
                    answer = await self._failover.complete(pool, call)
                done, message = ended(
                    run, answer_message(run, message_id), answer.reply or Reply("")
                )
                await self.end(owner, done, message)
            except asyncio.CancelledError:
                stopped = GatewayError(
                    "the gateway process stopped while the run was in progress; create a new run"
                )
                await asyncio.shield(self.end(owner, failed(run, stopped)))
                raise
            except (GatewayError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    exc = GatewayError(f"the run took longer than {self.deadline_s:g}s")
                await self.end(owner, failed(run, exc))
        except NotStored:
            pass  # the thread was deleted while its run was in progress
        except RegistryError as exc:
            log.warning("run %s could not be stored: %s", run.id, exc)

    def call(
        self, run: RunRecord, messages: list[MessageRecord], *, stream: bool, request_id: str
    ) -> Call:
        """The run as a call of the request path (never passed through to a worker)."""
        conv = conversation(run, messages, stream=stream)
        return Call("seed", "chat", None, stream=stream, decode=lambda: conv, request_id=request_id)

    async def begin(self, owner: str, run: RunRecord) -> RunRecord:
        """Store the run as in progress."""
        run = run.model_copy(update={"status": "in_progress", "started_at": now()})
        await self._store.update_run(owner, run, done=False)
        return run

    async def end(
        self, owner: str, run: RunRecord, message: MessageRecord | None = None
    ) -> RunRecord:
        """Store how the run ended (with its answer); an answer the thread has no room for
        fails the run instead. Return the run as stored."""
        try:
            await self._store.update_run(owner, run, done=True, answer=message)
        except (MessageTooLarge, StorageFull) as exc:
            run = failed(run, exc)
            await self._store.update_run(owner, run, done=True)
        return run

    async def stream(
        self,
        request: web.Request,
        owner: str,
        run: RunRecord,
        pool: Pool,
        message_id: str,
        request_id: str,
    ) -> web.StreamResponse:
        """Run `run` inside this request, answering with the Assistants event stream.

        A failure before the worker's answer begins is an HTTP status (the run is stored as
        failed); after it, a `thread.run.failed` event.
        """
        queued = run
        run = await self.begin(owner, run)
        try:
            messages, _ = await self._store.messages(owner, run.thread_id)
            call = self.call(run, messages, stream=True, request_id=request_id)
            stream = await self._failover.open_stream(pool, call)
        except GatewayError as exc:
            await self.end(owner, failed(run, exc))
            raise
        message = answer_message(run, message_id)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        text: list[str] = []
        stored = False  # how the run ended is in Redis
        try:
            await response.prepare(request)
            await response.write(
                event("thread.run.created", queued)
                + event("thread.run.queued", queued)
                + event("thread.run.in_progress", run)
                + event("thread.message.created", message)
                + event("thread.message.in_progress", message)
            )
            finish, usage, broken = None, None, None
            try:
                async for piece in stream.pieces():
                    if isinstance(piece, TextDelta) and piece.text:
                        text.append(piece.text)
                        await response.write(event("thread.message.delta", _delta(message, piece)))
                    elif isinstance(piece, Finish):
                        finish = piece.reason
                    elif isinstance(piece, UsageReport):
                        usage = piece.usage
            except StreamBroken as exc:
                broken = GatewayError(f"the worker's answer broke off: {exc}")
            if broken is not None:
                message = _cut(message.model_copy(update={"content": _text("".join(text))}))
                run = await self.end(owner, failed(run, broken), message)
            else:
                run, message = ended(run, message, Reply("".join(text), (), finish, usage))
                run = await self.end(owner, run, message)
            stored = True
            await response.write(
                event(f"thread.message.{message.status}", message)
                + event(f"thread.run.{run.status}", run)
                + DONE
            )
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            if not stored:  # the client went away: the run is cancelled, its text so far kept
                cancelled = run.model_copy(update={"status": "cancelled", "cancelled_at": now()})
                partial = message.model_copy(update={"content": _text("".join(text))})
                write = self.end(owner, cancelled, _cut(partial, "run_cancelled"))
                await asyncio.shield(_quietly(write))
            raise
        finally:
            await stream.aclose()
        return response


async def _quietly(write: Awaitable[Any]) -> None:
    try:
        await write
    except RegistryError as exc:
        log.warning("a cancelled run could not be stored: %s", exc)


def _text(value: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"value": value, "annotations": []}}]


def _cut(message: MessageRecord, reason: str = "run_failed") -> MessageRecord:
    return message.model_copy(
        update={
            "status": "incomplete",
            "incomplete_at": now(),
            "incomplete_details": {"reason": reason},
        }
    )


def _delta(message: MessageRecord, piece: TextDelta) -> dict[str, Any]:
    part = {"index": 0, "type": "text", "text": {"value": piece.text, "annotations": []}}
    return {"id": message.id, "object": "thread.message.delta", "delta": {"content": [part]}}
