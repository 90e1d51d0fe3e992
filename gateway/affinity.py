"""Prefix and session affinity: requests that share a prompt's start go to the same worker.

A worker that already holds a prompt's prefix in its KV cache skips computing it again, so its
first token comes much sooner. `balancing = "prefix"` sends requests that share a start to the
same worker, the same one in every gateway process, without asking Redis or any other process:

- The key. A request's session, when it names one (the `X-Session-ID` header, else the
  OpenAI `user` field), else the start of its conversation: its messages up to and including
  the first user message, role and text, cut to the model's `prefix_chars`. A system prompt
  longer than that keys by itself; a shorter one keys together with the first question, so
  every turn of one conversation (they all start the same) lands on the worker that holds it.
  The key is a 64-bit BLAKE2b of that text: the same in every process and every run.
- The choice. Weighted rendezvous hashing (HRW): each worker scores the key with a hash of
  (key, worker id), scaled by its weight; the key's workers in score order are its preference
  list. A worker that joins takes over only the keys it now scores highest on (about 1/N of
  them), a worker that leaves gives up only its own; no ring, no virtual nodes to tune.
- The bound. A worker takes a request for its key while its load (this process's requests in
  flight plus, when it publishes /metrics, the others' from its last report) is below
  max(`min_spill_load`, ceil(`max_load_ratio` x the pool's mean load with this request));
  otherwise the request goes to the key's next worker that is below its bound. Some worker
  always is. A hot prefix thus spills over its own preference list, the same one in every
  process, so its overflow also warms only a few caches rather than all of them.

Requests with no key (no messages, an empty prompt) go to the least loaded worker.
"""

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from gateway.balancing import LeastLoad, Ready
from gateway.calls import Call
from gateway.worker import Worker
from templates.conversation import Conversation, Message

SESSION_HEADER = "X-Session-ID"
_MAX_SESSION_CHARS = 256
_MASK = (1 << 64) - 1


class Affinity:
    """What one request can be placed by: its session, else the start of its conversation."""

    __slots__ = ("_chars", "_key", "_messages", "session")

    def __init__(
        self, session: str | None, messages: Callable[[], Sequence[Any]] | None = None
    ) -> None:
        self.session = session[:_MAX_SESSION_CHARS] if session else None
        self._messages = messages  # read only when a `prefix` pool asks for the key
        self._chars = -1
        self._key: int | None = None
        if self.session is not None:
            self._key = digest("session\x1f" + self.session)

    def key(self, prefix_chars: int) -> int | None:
        """The request's 64-bit placement key for a pool keyed on `prefix_chars` characters."""
        if self.session is not None or self._chars == prefix_chars:
            return self._key
        messages = self._messages() if self._messages is not None else ()
        text = root_text(messages, prefix_chars)
        self._chars, self._key = prefix_chars, digest(text) if text else None
        return self._key


def affinity_of(request: web.Request, call: Call) -> Affinity:
    """Read a request's session and (lazily) its conversation, for the `prefix` strategy."""
    session = request.headers.get(SESSION_HEADER)
    if not session and call.body is not None:
        user = call.body.get("user")
        session = user if isinstance(user, str) else None
    return Affinity(session, lambda: _messages(call))


def _messages(call: Call) -> Sequence[Any]:
    """The call's messages: the client's own JSON when it has them (no decoding), else the
    decoded conversation's."""
    body = call.body
    if body is not None:
        messages = body.get("messages")
        if isinstance(messages, list):
            return messages
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt:
            prompt = prompt[0]
        if isinstance(prompt, str):
            system = body.get("system")
            lead = [{"role": "system", "content": system}] if isinstance(system, str) else []
            return [*lead, {"role": "user", "content": prompt}]
    request = call.request()
    return request.messages if isinstance(request, Conversation) else ()


def root_text(messages: Sequence[Any], limit: int) -> str:
    """The conversation's start: each message up to the first user one, cut to `limit` chars.

    Messages are the client's JSON objects or the conversation model's: the same
    conversation gives the same text either way.
    """
    parts: list[str] = []
    size = 0
    for message in messages:
        if isinstance(message, Mapping):
            role, text = message.get("role"), _text(message.get("content"), limit - size)
        elif isinstance(message, Message):
            role, text = message.role, message.text[: max(limit - size, 0)]
        else:
            continue
        role_text = role[:32] if isinstance(role, str) else ""
        piece = f"{role_text}\x1f{text}\x1e"
        parts.append(piece)
        size += len(piece)
        if size >= limit or role == "user":
            break
    return "".join(parts)[:limit]


def _text(content: Any, limit: int) -> str:
    if isinstance(content, str):
        return content[: max(limit, 0)]
    if isinstance(content, list):
        texts = []
        size = 0
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"][: max(limit - size, 0)])
                size += len(texts[-1])
                if size >= limit:
                    break
        return "".join(texts)
    return ""


def digest(text: str) -> int:
    """Return a 64-bit hash of `text`, the same in every process (unlike `hash()`)."""
    raw = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "big")


def mix64(value: int) -> int:
    """Return `value` (64 bits) well mixed, for scoring a key against a worker or model."""
    # MurmurHash3's 64-bit finalizer: a bijection that spreads every input bit over the output.
    value = ((value ^ (value >> 33)) * 0xFF51AFD7ED558CCD) & _MASK
    value = ((value ^ (value >> 33)) * 0xC4CEB9FE1A85EC53) & _MASK
    return value ^ (value >> 33)


class PrefixAffinity:
    """Rendezvous hashing on the request's affinity key, with bounded load (see above)."""

    __slots__ = (
        "_pool",
        "_uniform",
        "_unkeyed",
        "max_load_ratio",
        "min_spill_load",
        "prefix_chars",
    )

    def __init__(
        self, prefix_chars: int = 1024, max_load_ratio: float = 1.25, min_spill_load: int = 8
    ) -> None:
        self.prefix_chars = prefix_chars
        self.max_load_ratio = max_load_ratio
        self.min_spill_load = min_spill_load
        self._unkeyed = LeastLoad()
        self._pool: tuple[Worker, ...] = ()
        self._uniform = True  # every worker of the pool has the same weight

    def order(
        self, workers: tuple[Worker, ...], ready: Ready, tries: int, affinity: Affinity | None
    ) -> list[Worker]:
        key = affinity.key(self.prefix_chars) if affinity is not None else None
        if key is None:
            return self._unkeyed.order(workers, ready, tries, None)
        if workers is not self._pool:  # a pool's tuple is replaced whenever it changes
            self._pool = workers
            self._uniform = len({w.record.weight for w in workers}) == 1
        able: list[Worker] = []
        scores: list[int] = []
        total = 0
        mask = _MASK
        for worker in workers:  # one pass: the hot loop of the strategy, kept inline
            if not ready(worker):
                continue
            stats = worker.stats
            total += stats.in_flight + stats.others
            value = key ^ worker.seed
            value = ((value ^ (value >> 33)) * 0xFF51AFD7ED558CCD) & mask
            value = ((value ^ (value >> 33)) * 0xC4CEB9FE1A85EC53) & mask
            able.append(worker)
            scores.append(value ^ (value >> 33))
        if len(able) <= 1:
            return able
        if self._uniform:
            ranked = sorted(range(len(able)), key=scores.__getitem__, reverse=True)
            weights = len(able) * able[0].record.weight
        else:
            # Weighted rendezvous: -w / ln(u), u uniform in (0, 1), picks each worker in
            # proportion to its weight and stays minimal on changes like the plain form.
            weighted = [
                -w.record.weight / math.log(((score >> 11) + 0.5) * 2.0**-53)
                for w, score in zip(able, scores, strict=True)
            ]
            ranked = sorted(range(len(able)), key=weighted.__getitem__, reverse=True)
            weights = sum(w.record.weight for w in able)
        # The bound counts this request in (total + 1): some worker is always below it.
        share = self.max_load_ratio * (total + 1) / weights
        floor = self.min_spill_load
        chosen: list[Worker] = []
        over: list[Worker] = []
        for index in ranked:
            worker = able[index]
            stats = worker.stats
            if stats.in_flight + stats.others < max(floor, math.ceil(share * worker.record.weight)):
                chosen.append(worker)
                if len(chosen) == tries:
                    return chosen
            else:
                over.append(worker)
        return (chosen + over)[:tries]
