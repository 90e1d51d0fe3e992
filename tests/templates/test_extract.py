"""Extracting the answer: the seed short form, JSONPath, raw text, and clear misses."""

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
