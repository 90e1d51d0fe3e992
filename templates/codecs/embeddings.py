"""Embeddings, OpenAI's and Ollama's (/api/embed, and the older /api/embeddings)."""

import base64
import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from templates.codecs._common import as_dict, count, json_doc
from templates.codecs.openai_chat import usage_of as openai_usage
from templates.conversation import Usage
from templates.errors import ExtractError

Encoding = Literal["float", "base64"]


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    inputs: tuple[str, ...]
    dimensions: int | None = None
    encoding: Encoding = "float"  # how the client wants the vectors back


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: tuple[list[float], ...]
    usage: Usage | None = None


def decode_openai(body: Mapping[str, Any]) -> EmbeddingRequest:
    raw = body.get("input")
    dims = body.get("dimensions")
    encoding: Encoding = "base64" if body.get("encoding_format") == "base64" else "float"
    return EmbeddingRequest(_inputs(raw), dims if isinstance(dims, int) else None, encoding)


def decode_ollama(body: Mapping[str, Any]) -> EmbeddingRequest:
    raw = body.get("input", body.get("prompt"))
    dims = body.get("dimensions")
    return EmbeddingRequest(_inputs(raw), dims if isinstance(dims, int) else None)


def _inputs(raw: Any) -> tuple[str, ...]:
    return (raw,) if isinstance(raw, str) else tuple(str(item) for item in raw or ())


def encode_openai(req: EmbeddingRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": list(req.inputs), "encoding_format": "float"}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    return body


def encode_ollama(req: EmbeddingRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": list(req.inputs)}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    return body


def decode_openai_answer(raw: bytes) -> Embeddings:
    doc = json_doc(raw)
    data = doc.get("data")
    if not isinstance(data, list):
        raise ExtractError(
            "the worker's embeddings answer has no data list",
            raw.decode(errors="replace"),
            "it was",
        )
    items = sorted((as_dict(item) for item in data), key=lambda item: item.get("index", 0))
    return Embeddings(
        tuple(_vector(item.get("embedding")) for item in items), openai_usage(doc.get("usage"))
    )


def decode_ollama_answer(raw: bytes) -> Embeddings:
    doc = json_doc(raw)
    vectors = doc.get("embeddings")
    if not isinstance(vectors, list):
        single = doc.get("embedding")  # the older /api/embeddings
        if not isinstance(single, list):
            raise ExtractError(
                "the worker's embeddings answer has no embeddings",
                raw.decode(errors="replace"),
                "it was",
            )
        vectors = [single]
    prompt = count(doc.get("prompt_eval_count"))
    return Embeddings(
        tuple(_vector(v) for v in vectors), Usage(prompt, 0) if prompt is not None else None
    )


def _vector(value: Any) -> list[float]:
    if isinstance(value, str):  # base64 float32, as OpenAI sends when asked for it
        floats = array("f")
        floats.frombytes(base64.b64decode(value))
        if sys.byteorder == "big":
            floats.byteswap()
        return floats.tolist()
    if not isinstance(value, list) or not all(isinstance(x, int | float) for x in value):
        raise ExtractError("an embedding in the worker's answer is not a list of numbers")
    return value


def _base64(vector: list[float]) -> str:
    floats = array("f", vector)
    if sys.byteorder == "big":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode()


def encode_openai_answer(result: Embeddings, req: EmbeddingRequest, model: str) -> dict[str, Any]:
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _base64(v) if req.encoding == "base64" else v,
        }
        for i, v in enumerate(result.vectors)
    ]
    out: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if result.usage is not None:
        out["usage"] = {
            "prompt_tokens": result.usage.prompt_tokens,
            "total_tokens": result.usage.prompt_tokens,
        }
    return out


def encode_ollama_answer(result: Embeddings, model: str, *, legacy: bool = False) -> dict[str, Any]:
    if legacy:
        return {"embedding": result.vectors[0] if result.vectors else []}
    out: dict[str, Any] = {"model": model, "embeddings": list(result.vectors)}
    if result.usage is not None:
        out["prompt_eval_count"] = result.usage.prompt_tokens
    return out
