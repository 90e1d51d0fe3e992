"""Streams that survive their worker: a stream whose worker fails midway goes on from another.

For a model with `resume_streams`, a streamed answer is read as events even from a worker that
speaks the client's protocol, so the gateway knows the text the client already has. When the
worker dies or stalls after the stream began (StreamBroken), the request goes to another
worker of the same model with that text as the start of the assistant's answer, and the
client's stream goes on where it stopped: no text twice, none missing, one stream.

How a worker is asked to continue is its preset's to say (an operation's `resume`): vLLM,
SGLang and llama.cpp continue a final assistant message when told `continue_final_message`
(with `add_generation_prompt` off); Ollama's chat and Anthropic's Messages continue one as it
is; an OpenAI completion continues a prompt that ends with the text. Template workers and
presets that do not say are never asked.

- Only text is resumed. Once part of a tool call has been sent, a broken stream ends with its
  error: half a call's arguments cannot be continued reliably.
- Trailing whitespace of the text sent is held back from the continuation (Anthropic refuses
  an assistant turn that ends in whitespace, chat templates trim it, and tokenizers read a
  lone trailing space badly); the continuation repeats it, and that repetition is dropped.
- The continuation is asked for the tokens left: the client's `max_tokens` less one per
  content chunk sent (the engines here stream a token per chunk).
- Usage: the continuing worker counts the text it was given as prompt. The client is told
  what one uninterrupted worker would have said: the same total, with the continued text's
  chunks counted back as completion.
- `resume_tries` bounds how often one stream is resumed; each continuation fails over between
  the remaining workers like any request. The stream's last chunk carries
  `"gateway": {"resumed": N}`.
"""

import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway.calls import Call
from gateway.errors import GatewayError
from gateway.failover import Failover
from gateway.pool import Pool
from gateway.stream import Stream, StreamBroken
from gateway.worker import Worker
from templates.conversation import (
    Conversation,
    Event,
    Finish,
    Message,
    Start,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageReport,
)

log = logging.getLogger(__name__)


def resumable(call: Call) -> bool:
    """Whether a stream of `call` can be continued at all (one answer of text)."""
    if call.op not in ("chat", "completion"):
        return False
    request = call.request()
    return isinstance(request, Conversation) and request.params.n == 1


class Resuming:
    """An open stream that continues on another worker when its own fails midway.

    It stands where a `Stream` would (gateway/routes/_common.py `relay`) and always yields
    events: the client's codec encodes them.
    """

    passthrough = False
    relayed = False
    usage: Usage | None = None  # the usage is in the events (UsageReport)

    def __init__(self, failover: Failover, pool: Pool, call: Call, stream: Stream, tries: int):
        self._failover = failover
        self._pool = pool
        self._call = call
        self._stream = stream
        self._left = tries
        self._failed: set[str] = set()  # ids of the workers that broke this stream
        self._first_at: float | None = None
        self.resumed = 0

    @property
    def worker(self) -> Worker:
        """The worker answering now (the last one, once the stream is over)."""
        return self._stream.worker

    @property
    def tries(self) -> int:
        return self._stream.tries

    @property
    def note(self) -> dict[str, Any] | None:
        return {"resumed": self.resumed} if self.resumed else None

    def estimated_completion(self) -> int:
        return 0

    def generation_s(self) -> float | None:
        first = self._first_at if self._first_at is not None else self._stream.first_at
        return time.perf_counter() - first if first is not None else None

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def pieces(self) -> AsyncIterator[Event | bytes]:
        """Yield the answer's events; raise StreamBroken only when it cannot be continued."""
        sent: list[str] = []  # the text the client has, chunk by chunk
        prefilled = 0  # chunks the current worker was given as its answer's start
        held = ""  # whitespace the continuation is expected to repeat
        tools = finished = False
        while True:
            stream = self._stream
            try:
                async for piece in stream.pieces():
                    if isinstance(piece, TextDelta):
                        if held:
                            text, held = _repeated(piece.text, held)
                            if not text:
                                continue
                            piece = TextDelta(text)
                        sent.append(piece.text)
                    elif isinstance(piece, Start):
                        if self.resumed:
                            continue  # the client's stream began long ago
                    elif isinstance(piece, ToolCallDelta):
                        tools = True
                    elif isinstance(piece, Finish):
                        finished = True
                    elif isinstance(piece, UsageReport) and prefilled:
                        piece = UsageReport(_as_uninterrupted(piece.usage, prefilled))
                    yield piece
                return
            except StreamBroken as broken:
                if finished:
                    return  # the answer was whole: only what follows its end went missing
                if tools or self._left <= 0:
                    self._count("failed")
                    raise
                if self._first_at is None:
                    self._first_at = stream.first_at
                self._failed.add(stream.worker.id)
                await stream.aclose()
                text = "".join(sent)
                head = text.rstrip()
                held = text[len(head) :]
                prefilled = len(sent) - _trailing_blank_chunks(sent)
                if self._spent(prefilled):
                    yield Finish("length")  # it had sent all the tokens it was asked for
                    return
                try:
                    self._stream = await self._continue(head, prefilled)
                except GatewayError as exc:
                    log.warning(
                        "a stream of %s broke and could not be resumed: %s",
                        self._pool.model,
                        exc.message,
                    )
                    self._count("failed")
                    raise StreamBroken(f"{broken}; no worker could go on: {exc.message}") from exc
                self._left -= 1
                self.resumed += 1
                self._count("resumed")
                log.info(
                    "resumed a stream of %s on %s after %d characters",
                    self._pool.model,
                    self._stream.worker.label,
                    len(head),
                )

    async def _continue(self, head: str, prefilled: int) -> Stream:
        """Open the stream that continues the answer from `head` on another worker."""
        call = self._call
        conv = call.request()
        assert isinstance(conv, Conversation)
        max_tokens = conv.params.max_tokens
        left = None if max_tokens is None else max_tokens - prefilled
        continued = _continued(conv, head, left)
        follow = Call(
            call.family,
            call.op,
            None,  # never passed through: the body is the conversation with its answer so far
            stream=True,
            decode=lambda: continued,
            request_id=call.request_id,
            continues=bool(head),
        )
        follow.trace_headers = call.trace_headers
        follow.span = call.span
        failed, op = self._failed, call.op

        def able(worker: Worker) -> bool:
            spec = worker.plan.operations.get(op)
            return worker.id not in failed and spec is not None and spec.resume is not None

        return await self._failover.open_stream(self._pool, follow, translate=True, accept=able)

    def _spent(self, prefilled: int) -> bool:
        conv = self._call.request()
        limit = conv.params.max_tokens if isinstance(conv, Conversation) else None
        return limit is not None and limit - prefilled <= 0

    def _count(self, outcome: str) -> None:
        metrics = self._failover.metrics
        if metrics is not None:
            metrics.stream_resumed(self._pool.model, outcome)


def _continued(conv: Conversation, head: str, max_tokens: int | None) -> Conversation:
    """`conv` with `head` as the start of the assistant's answer (or of a prompt's)."""
    params = conv.params
    if max_tokens is not None:
        params = dataclasses.replace(params, max_tokens=max_tokens)
    if conv.prompt is not None:
        return dataclasses.replace(conv, prompt=conv.prompt + head, params=params)
    messages = conv.messages
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant" and not last.tool_calls:
        # The client began the answer itself (a prefill): the text goes on from its own.
        messages = (*messages[:-1], Message("assistant", last.text + head))
    elif head:
        messages = (*messages, Message("assistant", head))
    return dataclasses.replace(conv, messages=messages, params=params)


def _repeated(text: str, held: str) -> tuple[str, str]:
    """Drop from `text` the start that repeats `held`; return (what is new, what is still held)."""
    n = 0
    limit = min(len(text), len(held))
    while n < limit and text[n] == held[n]:
        n += 1
    if n == len(text):  # all of it repeated: more may follow in the next chunk
        return "", held[n:]
    return text[n:], ""  # it went on (or went its own way): nothing more is held


def _trailing_blank_chunks(chunks: list[str]) -> int:
    count = 0
    for chunk in reversed(chunks):
        if chunk.strip():
            break
        count += 1
    return count


def _as_uninterrupted(usage: Usage, prefilled: int) -> Usage:
    """The continuing worker's usage as one uninterrupted worker would have counted it."""
    moved = min(prefilled, usage.prompt_tokens)
    prompt = usage.prompt_tokens - moved
    cached = usage.cached_tokens
    return Usage(prompt, usage.completion_tokens + moved, min(cached, prompt) if cached else cached)
