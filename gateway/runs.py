"""Running an Assistants run: the thread to a model's pool and its answer back to the thread.

A run goes the way of any request: the assistant's instructions and the thread's messages
become a `Conversation`, sent as a `Call` through the dispatcher (gateway/fallback.py: an
alias's choice, the model, its fallbacks) and the failover loop to a pool, so balancing,
failover, worker limits and timeouts apply; it is never passed through, whatever the worker
speaks. A run is placed by its thread (or the client's X-Session-ID), so the runs of one thread
stay on one arm of an alias. Each answer is accounted as a chat answer is
(gateway/accounting.py), to the key that started the run and the model that gave it. The
answer is appended to the thread as the assistant's message, and the run ends completed,
incomplete (the answer was cut at `max_completion_tokens`) or failed with `last_error`; an
answer that calls the run's function tools leaves it `requires_action` until the client gives
their outputs, and then it goes on. The shapes on both sides are gateway/run_shapes.py.

A run created without `stream` runs as a task in this process and its create call answers at
once with the run queued, as OpenAI's does: the client polls `GET .../runs/{id}`, which any
replica answers from Redis, and a run neither ties its client's connection up for the length
of a generation nor ends when that connection does. The run's deadline (the request timeout
and a margin) is stored with it: if this process dies mid-run, readers see it expired after
that and the thread takes new runs. Tasks still running at shutdown end as failed. Such a run
outlives its request, so it is accounted to a trace of its own (`Origin`) and charges a metered
key (token limits, budget) itself when its turn ends; the key's limits were checked when the
run was created, as for any request. A streamed run runs inside its request: the stream is its
answer, accounted and charged as a chat stream is; a client that leaves cancels it.
"""

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from gateway.affinity import Affinity
from gateway.calls import Call
from gateway.errors import GatewayError
from gateway.fallback import Dispatcher
from gateway.metering import reply_text
from gateway.run_shapes import (
    DONE,
    answer_message,
    conversation,
    cut,
    delta,
    event,
    failed,
    now,
    outcome,
)
from gateway.stream import StreamBroken
from gateway.worker import Worker
from registry import (
    WAITING,
    ApiKey,
    AssistantStore,
    MessageRecord,
    MessageTooLarge,
    NotStored,
    RegistryError,
    RunRecord,
    StorageFull,
    new_id,
)
from templates.conversation import (
    Event,
    Reply,
    TextDelta,
    reply_of,
)

if TYPE_CHECKING:  # at run time these modules import gateway.state, which imports this one
    from gateway.accounting import Accountant
    from gateway.auth import Guard
    from gateway.observe import Trace

log = logging.getLogger(__name__)

# Beyond the request timeout, the time a run may take to be stored before it counts as lost.
_DEADLINE_MARGIN_S = 30.0
# Told to polling clients (the SDK's create_and_poll reads it), instead of its 1 s default.
POLL_AFTER_MS = 250


@dataclass(frozen=True, slots=True)
class Origin:
    """What a run's turn keeps of the request that started it (or gave its tool outputs).

    `trace` is what its answers are accounted to: the request's own for a streamed run; for a
    polled one, which goes on after its request has ended, one of its own with the request's
    id and key. `key` is the key the run charges itself when its turn ends (a polled run's;
    None where the request's end charges it, or no key is required). `session` places the
    run: the client's X-Session-ID, else its thread.
    """

    trace: "Trace"
    key: ApiKey | None
    session: str


class Runner:
    """Runs the runs this process started, and ends those still running at shutdown."""

    def __init__(
        self,
        store: AssistantStore,
        dispatcher: Dispatcher,
        accountant: "Accountant",
        guard: "Guard",
        *,
        request_timeout_s: float,
    ):
        self._store = store
        self._dispatcher = dispatcher
        self._accountant = accountant
        self._guard = guard
        self.deadline_s = request_timeout_s + _DEADLINE_MARGIN_S
        self._tasks: set[asyncio.Task[None]] = set()

    def new_run(self, **fields: Any) -> RunRecord:
        """A queued run, with the deadline after which readers count it as lost."""
        created = now()
        return RunRecord(created_at=created, expires_at=created + int(self.deadline_s), **fields)

    def start(self, owner: str, run: RunRecord, origin: Origin) -> None:
        """Run `run` (stored, queued) as a task of this process."""
        task = asyncio.create_task(self._run(owner, run, origin), name=f"assistants-{run.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel the runs still in progress; each stores itself as failed."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, owner: str, run: RunRecord, origin: Origin) -> None:
        try:
            try:
                run = await self.begin(owner, run)
                call = await self._call(owner, run, stream=False, origin=origin)
                async with asyncio.timeout(self.deadline_s):
                    served = await self._dispatcher.complete(
                        run.model, call, _affinity(origin, call)
                    )
                answer = served.result
                reply = answer.reply or Reply("")
                self._account(origin, served.model, answer.worker, reply, call)
                if origin.key is not None:  # before the run is seen to end: its spend is in
                    await self._guard.finish(origin.key, None, origin.trace)
                await self.end(owner, *self._outcome(run, reply))
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

    async def _call(self, owner: str, run: RunRecord, *, stream: bool, origin: Origin) -> Call:
        """The run as a call of the request path (never passed through to a worker)."""
        messages, _ = await self._store.messages(owner, run.thread_id)
        conv = conversation(run, messages, stream=stream)
        return Call(
            "seed",
            "chat",
            None,
            stream=stream,
            decode=lambda: conv,
            request_id=origin.trace.request_id,
        )

    def _account(
        self,
        origin: Origin,
        model: str,
        worker: Worker,
        reply: Reply,
        call: Call,
        generation_s: float | None = None,
    ) -> None:
        """Account one answer of the run (whole, or a stream as far as it went)."""
        self._accountant.account(
            origin.trace,
            model,
            worker,
            reply.usage,
            call=call,
            completion=reply_text(reply) if reply.usage is None else 0,
            generation_s=generation_s,
        )

    def _outcome(
        self, run: RunRecord, reply: Reply, message: MessageRecord | None = None
    ) -> tuple[RunRecord, MessageRecord | None]:
        message = message or answer_message(run, new_id("msg"))
        return outcome(run, message, reply, deadline_s=self.deadline_s)

    async def begin(self, owner: str, run: RunRecord) -> RunRecord:
        """Store the queued run as in progress."""
        run = run.model_copy(update={"status": "in_progress", "started_at": now()})
        await self._store.update_run(owner, run, thread="keep", expect="queued")
        return run

    async def end(
        self, owner: str, run: RunRecord, message: MessageRecord | None = None
    ) -> RunRecord:
        """Store how the run's turn ended (with the message it adds); a message the thread
        has no room for fails the run instead. Return the run as stored."""
        keep: float | Literal["end"] = self.deadline_s if run.status in WAITING else "end"
        try:
            await self._store.update_run(owner, run, thread=keep, answer=message)
        except (MessageTooLarge, StorageFull) as exc:
            run = failed(run, exc).model_copy(update={"tool_rounds": []})
            await self._store.update_run(owner, run, thread="end")
        return run

    async def stream(
        self, request: web.Request, owner: str, run: RunRecord, origin: Origin
    ) -> web.StreamResponse:
        """Run `run` inside this request, answering with the Assistants event stream.

        A failure before the worker's answer begins is an HTTP status (the run is stored as
        failed); after it, a `thread.run.failed` event.
        """
        queued = run
        run = await self.begin(owner, run)
        try:
            call = await self._call(owner, run, stream=True, origin=origin)
            served = await self._dispatcher.open_stream(run.model, call, _affinity(origin, call))
        except GatewayError as exc:
            await self.end(owner, failed(run, exc))
            raise
        stream = served.result
        trace = origin.trace  # the request's: X-Gateway-Model and the access log say who answered
        trace.model, trace.served_model = run.model, served.model
        trace.worker, trace.tries = stream.worker.label, stream.tries
        message = answer_message(run, new_id("msg"))
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        pieces: list[Event] = []
        text: list[str] = []
        stored = False  # how the run's turn ended is in Redis
        broken = None
        try:
            try:
                await response.prepare(request)
                await response.write(
                    event("thread.run.created", queued)
                    + event("thread.run.queued", queued)
                    + event("thread.run.in_progress", run)
                )
                async for piece in stream.pieces():
                    if isinstance(piece, bytes):
                        continue  # never passed through: a run's call has no client body
                    pieces.append(piece)
                    if isinstance(piece, TextDelta) and piece.text:
                        if not text:  # the message begins with its first text
                            await response.write(
                                event("thread.message.created", message)
                                + event("thread.message.in_progress", message)
                            )
                        text.append(piece.text)
                        await response.write(event("thread.message.delta", delta(message, piece)))
            except StreamBroken as exc:
                broken = GatewayError(f"the worker's answer broke off: {exc}")
            finally:  # as far as it went, however it ended (as a chat stream), before the run ends
                reply = reply_of(pieces)
                self._account(
                    origin, served.model, stream.worker, reply, call, stream.generation_s()
                )
            said: MessageRecord | None
            if broken is not None:
                said = cut(message, "".join(text)) if text else None
                run = failed(run, broken)
            else:
                run, said = self._outcome(run, reply, message)
            try:
                run = await self.end(owner, run, said)
            except RegistryError as exc:  # the thread was deleted, or Redis went away
                run = failed(run, exc)
            stored = True
            tail = (
                event(f"thread.message.{said.status}", said) if said is not None and text else b""
            )
            await response.write(tail + event(f"thread.run.{run.status}", run) + DONE)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            if not stored:  # the client went away: the run is cancelled, its text so far kept
                cancelled = run.model_copy(update={"status": "cancelled", "cancelled_at": now()})
                partial = cut(message, "".join(text), "run_cancelled") if text else None
                await asyncio.shield(_quietly(self.end(owner, cancelled, partial)))
            raise
        finally:
            await stream.aclose()
        return response


def _affinity(origin: Origin, call: Call) -> Affinity:
    return Affinity(origin.session, lambda: call.request().messages)


async def _quietly(write: Awaitable[Any]) -> None:
    try:
        await write
    except RegistryError as exc:
        log.warning("a cancelled run could not be stored: %s", exc)
