"""Usage read from a worker's own bytes: whole answers, and streams however they are cut."""

import orjson
import pytest

from gateway.metering import UsageTap, counts_of_answer, usage_of_answer
from templates.conversation import Usage


class Out:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def backlog(self) -> int:
        return 0


def sse(doc: object) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 5}}
OPENAI_STREAM = (
    sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None})
    + sse({"choices": [{"index": 0, "delta": {"content": 'a {b} "usage":{'}}], "usage": None})
    + sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None})
    + sse({"choices": [], "usage": USAGE})
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 2, 7, 64, len(OPENAI_STREAM)])
def test_an_openai_stream_cut_anywhere_gives_its_usage_and_loses_only_the_usage_chunk(
    size: int,
) -> None:
    out = Out()
    tap = UsageTap(out, "openai", strip=True)
    for i in range(0, len(OPENAI_STREAM), size):
        tap.write(OPENAI_STREAM[i : i + size])
    tap.flush()
    assert tap.usage == Usage(7, 3, 5)
    kept = OPENAI_STREAM.replace(sse({"choices": [], "usage": USAGE}), b"")
    assert out.data.replace(b"\n\n\n", b"\n\n") == kept


def test_a_stream_the_client_asked_usage_of_keeps_it() -> None:
    out = Out()
    tap = UsageTap(out, "openai", strip=False)
    tap.write(OPENAI_STREAM)
    tap.flush()
    assert out.data == OPENAI_STREAM and tap.usage == Usage(7, 3, 5)


def test_anthropic_streams_take_input_from_the_start_and_output_from_the_last_delta() -> None:
    start = {
        "type": "message_start",
        "message": {"usage": {"input_tokens": 9, "output_tokens": 1, "cache_read_input_tokens": 4}},
    }
    delta = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 12}}
    out = Out()
    tap = UsageTap(out, "anthropic")
    tap.write(b"event: message_start\n" + sse(start) + b"event: message_delta\n" + sse(delta))
    tap.flush()
    assert tap.usage == Usage(13, 12, 4)


def test_ollama_counts_come_from_the_done_line() -> None:
    out = Out()
    tap = UsageTap(out, "ollama")
    lines = [
        {"message": {"content": "x"}, "done": False},
        {"done": True, "prompt_eval_count": 3, "eval_count": 2},
    ]
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    tap.write(data[:10])
    tap.write(data[10:])
    assert tap.usage == Usage(3, 2) and out.data == data


def test_whole_answers_give_the_usage_object_only() -> None:
    text = {"content": 'say "usage": {"prompt_tokens": 99}', "role": "assistant"}
    openai = orjson.dumps({"choices": [{"message": text}], "usage": USAGE})
    assert usage_of_answer(openai, "openai") == Usage(7, 3, 5)
    context = list(range(5000))  # generate's context comes before the counts
    ollama = orjson.dumps(
        {"response": "x", "context": context, "prompt_eval_count": 11, "eval_count": 4}
    )
    assert usage_of_answer(ollama, "ollama") == Usage(11, 4)
    anthropic = orjson.dumps({"content": [], "usage": {"input_tokens": 5, "output_tokens": 2}})
    assert usage_of_answer(anthropic, "anthropic") == Usage(5, 2)
    assert usage_of_answer(b'{"choices": []}', "openai") is None
    assert usage_of_answer(b'{"usage": {"prompt_tokens": ', "openai") is None


@pytest.mark.parametrize(
    "usage",
    [
        b'"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}',
        b'"usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}',
        b'"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42 }',
        b'"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,'
        b'"prompt_tokens_details":{"cached_tokens":8}}',
        b'"usage":{"completion_tokens":30,"prompt_tokens":12,"total_tokens":42}',
    ],
)
def test_counts_of_an_answer_are_its_usage_however_the_worker_spaced_it(usage: bytes) -> None:
    raw = b'{"id":"x","choices":[{"message":{"content":"hi"}}],' + usage + b"}"
    found = usage_of_answer(raw, "openai")
    assert found is not None and found.prompt_tokens == 12 and found.completion_tokens == 30
    counts = counts_of_answer(raw, "openai")
    assert counts == (found.prompt_tokens, found.completion_tokens, found.cached_tokens)
    assert counts_of_answer(b'{"choices": []}', "openai") is None
    ollama = b'{"response":"x","prompt_eval_count":11,"eval_count":4}'
    assert counts_of_answer(ollama, "ollama") == (11, 4, None)
