"""One codec per protocol, around the conversation model (templates/conversation.py).

Each protocol module has the same four parts: decode a client's request, encode a worker's
request, decode a worker's answer or stream chunk, encode the client's answer or stream. The
worker side of a preset operation is bound here, once per registration, as a `WorkerCodec`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from templates.codecs import anthropic, embeddings, ollama, openai_chat, openai_completions
from templates.codecs._common import StreamEncoder
from templates.codecs.embeddings import EmbeddingRequest, Embeddings
from templates.codecs.template import TemplateAnswers
from templates.conversation import Conversation, Event, Reply

ChunkDecoder = Callable[[dict[str, Any]], list[Event]]


def _stateless(decode: ChunkDecoder) -> Callable[[], ChunkDecoder]:
    return lambda: decode


@dataclass(frozen=True, slots=True)
class WorkerCodec:
    """How a preset worker's chat or completion is asked for and read."""

    encode: Callable[[Conversation, str, bool], dict[str, Any]]  # (conv, model, stream) -> body
    answer: Callable[[bytes], Reply]
    chunks: Callable[[], ChunkDecoder]  # a new decoder for each stream (some keep counts)


@dataclass(frozen=True, slots=True)
class EmbeddingCodec:
    encode: Callable[[EmbeddingRequest, str], dict[str, Any]]
    answer: Callable[[bytes], Embeddings]


Codec = WorkerCodec | EmbeddingCodec | TemplateAnswers

_WORKER: dict[tuple[str, str], Codec] = {
    ("openai", "chat"): WorkerCodec(
        openai_chat.encode_request, openai_chat.decode_answer, _stateless(openai_chat.decode_chunk)
    ),
    ("openai", "completion"): WorkerCodec(
        openai_completions.encode_request,
        openai_completions.decode_answer,
        _stateless(openai_completions.decode_chunk),
    ),
    ("openai", "embedding"): EmbeddingCodec(
        embeddings.encode_openai, embeddings.decode_openai_answer
    ),
    ("ollama", "chat"): WorkerCodec(
        ollama.encode_chat, ollama.decode_chat_answer, lambda: ollama.chunk_decoder("chat")
    ),
    ("ollama", "completion"): WorkerCodec(
        ollama.encode_generate,
        ollama.decode_generate_answer,
        lambda: ollama.chunk_decoder("generate"),
    ),
    ("anthropic", "chat"): WorkerCodec(
        anthropic.encode_request, anthropic.decode_answer, anthropic.chunk_decoder
    ),
    ("ollama", "embedding"): EmbeddingCodec(
        embeddings.encode_ollama, embeddings.decode_ollama_answer
    ),
}


def worker_codec(protocol: str, op: str) -> Codec:
    """The codec of a preset protocol's operation."""
    return _WORKER[(protocol, op)]


__all__ = [
    "Codec",
    "EmbeddingCodec",
    "EmbeddingRequest",
    "Embeddings",
    "StreamEncoder",
    "TemplateAnswers",
    "WorkerCodec",
    "anthropic",
    "embeddings",
    "ollama",
    "openai_chat",
    "openai_completions",
    "worker_codec",
]
