"""Extracting the answer: the seed short form, JSONPath, raw text, and clear misses."""

import functools

import orjson
import pytest

from templates import ExtractError, TemplateError, compile_extract

DOC = {
    "data": {"items": [{"attributes": {"answer": "first"}}, {"attributes": {"answer": "second"}}]},
    "choices": [{"message": {"content": "hi", "role": "assistant"}}],
    "weird key.with dots": {"v": 1},
    "score": 0.5,
}
RAW = orjson.dumps(DOC)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("data.items[].attributes.answer", "first"),
        ("data.items[1].attributes.answer", "second"),
        ("data.items[-1].attributes.answer", "second"),
        ("$.data.items[0].attributes.answer", "first"),
        ("$.choices[0].message.content", "hi"),
        ("$['weird key.with dots'].v", "1"),
        ("$.data.items[?(@.attributes.answer == 'second')].attributes.answer", "second"),
        ("$.choices[*].message.role", "assistant"),
        ("score", "0.5"),
        ("choices[].message", '{"content":"hi","role":"assistant"}'),
    ],
)
def test_paths_extract_the_answer(path: str, expected: str) -> None:
    assert compile_extract(path).extract(RAW) == expected


def test_empty_path_means_the_raw_response_text() -> None:
    assert compile_extract("").extract(b"plain answer \xe2\x9c\x93") == "plain answer ✓"


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("data.items[5].attributes.answer", ["list of 2", "no index 5"]),
        ("data.nothing", ["no key 'nothing'", "items"]),
        ("score.x", ["a number, not an object"]),
        ("$.missing[0]", ["no key 'missing'"]),
        ("$.choices[?(@.x == 1)]", ["no value"]),
    ],
)
def test_missing_values_raise_a_message_naming_the_path(path: str, words: list[str]) -> None:
    with pytest.raises(ExtractError) as caught:
        compile_extract(path).extract(RAW)
    assert path in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_non_json_response_is_reported_with_its_beginning() -> None:
    with pytest.raises(ExtractError, match=r"not JSON.*<html>"):
        compile_extract("a.b").extract(b"<html>502 Bad Gateway</html>")


@pytest.mark.parametrize("path", ["a..b", "$.a[?(@.b ==", "a.b[x]", "$$", "a b.[c"])
def test_unparsable_paths_are_refused_at_compile_time(path: str) -> None:
    with pytest.raises(TemplateError, match="response_extract"):
        compile_extract(path)


def test_only_jsonpath_expressions_are_costly() -> None:
    assert compile_extract("$.choices[*].message.content").costly
    assert compile_extract("$..content").costly
    for cheap in ("", "a.b[].c", "$.choices[0].message.content", "$['k'][2]"):
        assert not compile_extract(cheap).costly


@functools.cache
def wide(n: int) -> bytes:
    """A chat answer with n log-probabilities: large, but with its text in one place."""
    logprobs = [{"token": "t", "p": -0.5} for _ in range(n)]
    return orjson.dumps(
        {"choices": [{"index": 0, "message": {"content": "hi"}, "logprobs": logprobs}]}
    )


@pytest.mark.parametrize("path", ["$..*", "$..content", "$..*..*", "$..logprobs[?(@.p < 0)]"])
def test_a_path_that_walks_a_huge_answer_stops_with_an_extract_error(path: str) -> None:
    with pytest.raises(ExtractError, match="needs more work than allowed") as caught:
        compile_extract(path).extract(wide(60_000))
    assert "plain path" in str(caught.value)


def test_the_work_budget_can_be_set_per_path() -> None:
    raw = wide(300)
    assert compile_extract("$..content", max_steps=10_000).extract(raw) == "hi"
    with pytest.raises(ExtractError, match=r"more work than allowed \(100 steps\)"):
        compile_extract("$..content", max_steps=100).extract(raw)


def test_one_wide_list_is_charged_before_it_is_walked() -> None:
    raw = orjson.dumps({"a": list(range(150_000))})
    with pytest.raises(ExtractError, match="more work than allowed"):
        compile_extract("$.a[*]").extract(raw)


def test_nested_descents_on_a_deep_answer_stop_with_an_extract_error() -> None:
    deep: object = "x"
    for _ in range(500):
        deep = {"a": deep}
    with pytest.raises(ExtractError, match="more work than allowed"):
        compile_extract("$..a..a..a").find(deep)


def test_a_selective_path_on_a_large_answer_still_finds_its_text() -> None:
    raw = wide(60_000)
    assert compile_extract("$.choices[?(@.index == 0)].message.content").extract(raw) == "hi"
    assert compile_extract("$.choices[*].message.content").extract(raw) == "hi"
    assert compile_extract("$.choices[0].logprobs[5].p").extract(raw) == "-0.5"  # plain


def nested(depth: int) -> bytes:
    return b'{"a":' + b"[" * depth + b"]" * depth + b"}"


def test_a_value_nested_too_deep_to_turn_into_text_is_an_extract_error() -> None:
    """orjson writes at most 254 levels: a worker's 300-level value was a 500."""
    for path in ("a", "$.a", "$.*"):
        extractor = compile_extract(path)
        with pytest.raises(ExtractError, match="cannot be turned into JSON text"):
            extractor.extract(nested(300))
        with pytest.raises(ExtractError, match="cannot be turned into JSON text"):
            extractor.text_or_none(orjson.loads(nested(300)))


def test_an_answer_nested_past_the_json_parser_limit_is_an_extract_error() -> None:
    with pytest.raises(ExtractError, match="not JSON"):
        compile_extract("a").extract(nested(2000))


@pytest.mark.parametrize(
    ("path", "doc"),
    [
        ("$[*].`sorted`", {"x": [1, "a", None]}),  # sorting values that do not compare
        ("$[*][\\b]", [[{"b": 1}, {"b": "x"}]]),
        ("$..[?(@ == $.z)]", orjson.loads(b"[" * 1000 + b"]" * 1000)),  # RecursionError
    ],
)
def test_a_jsonpath_that_fails_on_odd_data_is_an_extract_error(path: str, doc: object) -> None:
    extractor = compile_extract(path)
    with pytest.raises(ExtractError, match="cannot evaluate"):
        extractor.find(doc)
    with pytest.raises(ExtractError, match="cannot evaluate"):
        extractor.text_or_none(doc)  # not None: the value may well be there


def test_text_or_none_is_none_only_when_the_value_is_absent() -> None:
    extractor = compile_extract("choices[].delta.content")
    assert extractor.text_or_none({"choices": []}) is None
    assert extractor.text_or_none({"choices": [{"delta": {}}]}) is None
    assert extractor.text_or_none({"choices": [{"delta": {"content": None}}]}) is None
    assert extractor.text_or_none({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    with pytest.raises(ExtractError):  # there, but unreadable: not silently dropped
        compile_extract("$.a").text_or_none(orjson.loads(nested(300)))


SECRET = "sk-live-0123456789abcdefghijklmnopqrstuvwxyz"


def redact(text: str) -> str:
    return text.replace(SECRET, "[redacted]")


def test_a_secret_cut_by_the_quote_limit_is_redacted_whole() -> None:
    """The worker echoes its API key across the 120-character cut of the quote."""
    raw = ("<html>" + "x" * 100 + SECRET + "</html>").encode()
    with pytest.raises(ExtractError) as caught:
        compile_extract("a.b").extract(raw)
    error = caught.value
    assert SECRET not in error.message and "sk-live" not in error.message
    assert error.quote.startswith("<html>") and SECRET in error.quote
    shown = error.describe(redact)
    assert "not JSON" in shown and "[redacted]" in shown and "sk-live" not in shown
    assert "sk-live" in str(error)  # unredacted, for a test's or a log's eye
    assert len(error.describe(redact, limit=20)) < len(shown)


def test_worker_keys_are_quoted_not_written_into_the_message() -> None:
    with pytest.raises(ExtractError) as caught:
        compile_extract("data.text").extract(orjson.dumps({"data": {SECRET: 1, "other": 2}}))
    error = caught.value
    assert SECRET not in error.message and "no key 'text'" in error.message
    assert error.describe(redact).endswith("its keys are '[redacted], other'")


def test_a_jsonpath_library_message_is_quoted_not_written_into_the_message() -> None:
    with pytest.raises(ExtractError) as caught:
        compile_extract("$[*].`sorted`").find({"x": [SECRET, 1]})
    assert (
        caught.value.message == "cannot evaluate '$[*].`sorted`' on the worker response (TypeError)"
    )
    assert "not supported between" in caught.value.quote


def test_a_quote_is_bounded() -> None:
    with pytest.raises(ExtractError) as caught:
        compile_extract("a").extract(b"<" * 100_000)
    assert 1000 < len(caught.value.quote) <= 4096
