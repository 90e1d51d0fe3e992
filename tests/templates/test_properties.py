"""Hostile input to templates and extract paths: any prompt, JSON or path string gives a value
or a TemplateError/ExtractError, never another exception."""

import contextlib
from typing import Any
from urllib.parse import unquote

import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.http1 import parse_url
from registry import WorkerSpec
from templates import (
    MESSAGES,
    MODEL_NAME,
    MODEL_TEMPERATURE,
    SYSTEM_PROMPT,
    USER_PROMPT,
    ExtractError,
    TemplateError,
    compile_extract,
    compile_request,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = ["USER_PROMPT", "MODEL_NAME", "MODEL_TEMPERATURE", "MESSAGES", "TOP_P", "BOGUS", "x"]
# Text that is likely to hold placeholder syntax, broken syntax and JSON-ish punctuation.
PIECES = st.sampled_from(
    [f"{{{n}}}" for n in NAMES]
    + [f"<{n}>" for n in NAMES]
    + ["{", "}", "<", ">", '"', "\\", "\n", "@@", "$", ".", "[", "]", "[]", "[0]", "'", "*"]
)
TEXT = st.lists(st.one_of(st.text(max_size=8), PIECES), max_size=8).map("".join)
ANY_TEXT = st.one_of(TEXT, st.text(alphabet=st.characters(codec="utf-8"), max_size=40))

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    ANY_TEXT,
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)
# Path-like strings: the tokens of both path syntaxes (and JSONPath extensions), shuffled.
PATH_TOKENS = st.sampled_from(
    ["$", ".", "..", "[", "]", "[]", "[0]", "[-1]", "[*]", "[1:2]", "[?(@.a == 1)]", "a", "b",
     "'", '"', "*", "(", ")", "|", "&", "`this`", "`len`", "@", "=", "~", "-", "0", " ", "\\",
     "[?(@.a > 'x')]", "sorted", "split(a, b)", "sub(/x/, y)", "+", "%", "/"]
)  # fmt: skip
PATHS = st.one_of(ANY_TEXT, st.lists(PATH_TOKENS, max_size=10).map("".join))
# Values a client can put in a request, including any JSON where a list of messages goes.
VALUES = st.fixed_dictionaries(
    {
        USER_PROMPT: ANY_TEXT,
        MODEL_NAME: ANY_TEXT,
        MODEL_TEMPERATURE: st.one_of(st.none(), st.floats(0, 2)),
        MESSAGES: JSON,
    }
)


@FAST
@given(body=JSON, url=st.one_of(TEXT, st.just("http://w:8/x/{MODEL_NAME}?q={USER_PROMPT}")))
def test_any_body_and_url_compile_or_raise_template_error(body: Any, url: str) -> None:
    with contextlib.suppress(TemplateError):
        compile_request("POST", url, {}, body)


@HEAVY
@given(body=JSON, values=VALUES, header=TEXT)
def test_a_compiled_body_renders_any_values_to_json(
    body: Any, values: dict[str, Any], header: str
) -> None:
    template = {"input": "{USER_PROMPT}", "extra": body}
    try:
        plan = compile_request("POST", "http://w/x?m={MODEL_NAME}", {"X-H": header}, template)
    except TemplateError:
        return
    rendered = plan.render(values)
    assert rendered.body is not None
    sent = orjson.loads(rendered.body)
    assert sent["input"] == values[USER_PROMPT]  # the prompt arrives unchanged, whatever it holds
    assert all("\n" not in value and "\r" not in value for value in rendered.headers.values())


@FAST
@given(prompt=ANY_TEXT)
def test_a_get_url_carries_any_prompt_without_changing_the_host(prompt: str) -> None:
    plan = compile_request("GET", "http://w:9/x?q={USER_PROMPT}", {}, None)
    url = plan.render({USER_PROMPT: prompt}).url
    assert url.startswith("http://w:9/x?q=")
    assert "#" not in url and " " not in url


@FAST
@given(path=PATHS)
def test_any_path_string_compiles_or_raises_template_error(path: str) -> None:
    with contextlib.suppress(TemplateError):
        compile_extract(path)


@FAST
@given(path=PATHS, doc=JSON)
def test_extract_on_any_json_gives_text_or_extract_error(path: str, doc: Any) -> None:
    try:
        extractor = compile_extract(path)
    except TemplateError:
        return
    raw = orjson.dumps(doc)
    with contextlib.suppress(ExtractError):
        assert isinstance(extractor.extract(raw), str)
    with contextlib.suppress(ExtractError):
        extractor.find(doc)
    with contextlib.suppress(ExtractError):
        text = extractor.text_or_none(doc)
        assert text is None or isinstance(text, str)


# Paths that reach deep values, plain and through jsonpath-ng.
DEEP_PATHS = st.one_of(
    PATHS,
    st.sampled_from(["k", "[]", "$.k", "$[0]", "$..*", "$..k", "$.*", "$..[0]", "$..[?(@ == 1)]"]),
    st.lists(st.sampled_from(["k", "[0]", "[]", ".k"]), min_size=1, max_size=6).map("".join),
)


@FAST
@given(
    path=DEEP_PATHS,
    depth=st.one_of(st.integers(0, 1100), st.sampled_from([253, 254, 255, 1023, 1024, 1025])),
    pattern=st.lists(st.booleans(), min_size=1, max_size=6),
    leaf=st.sampled_from([b"1", b'"x"', b"[]", b"{}", b"null", b"1e999", b"\xff", b""]),
)
def test_extract_on_deeply_nested_answers_gives_text_or_extract_error(
    path: str, depth: int, pattern: list[bool], leaf: bytes
) -> None:
    """orjson reads 1024 levels, writes 254, and jsonpath-ng recurses: all are ExtractError."""
    try:
        extractor = compile_extract(path)
    except TemplateError:
        return
    levels = [pattern[i % len(pattern)] for i in range(depth)]  # True: a list, False: an object
    opening = b"".join(b"[" if is_list else b'{"k":' for is_list in levels)
    closing = b"".join(b"]" if is_list else b"}" for is_list in reversed(levels))
    raw = opening + leaf + closing
    with contextlib.suppress(ExtractError):
        assert isinstance(extractor.extract(raw), str)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    with contextlib.suppress(ExtractError):
        extractor.find(doc)
    with contextlib.suppress(ExtractError):
        text = extractor.text_or_none(doc)
        assert text is None or isinstance(text, str)


@FAST
@given(prompt=ANY_TEXT, other=st.sampled_from(["", ".", "..", "x"]))
def test_a_prompt_in_a_url_path_never_walks_the_workers_path(prompt: str, other: str) -> None:
    plan = compile_request("GET", "http://w/api/{USER_PROMPT}{SYSTEM_PROMPT}/x?q=1", {}, None)
    url = plan.render({USER_PROMPT: prompt, SYSTEM_PROMPT: other}).url
    target = parse_url(url).target
    assert target.startswith("/api/") and target.endswith("/x?q=1")
    assert target.count("/") == 3  # the values stay one segment
    segment = target.split("/")[2]
    assert segment not in (".", "..") and unquote(segment) == prompt + other


@FAST
@given(path=PATHS, raw=st.one_of(st.binary(max_size=64), JSON.map(orjson.dumps)))
def test_extract_on_any_bytes_gives_text_or_extract_error(path: str, raw: bytes) -> None:
    try:
        extractor = compile_extract(path)
    except TemplateError:
        return
    with contextlib.suppress(ExtractError):
        assert isinstance(extractor.extract(raw), str)


@HEAVY
@given(spec=st.dictionaries(
    st.sampled_from(["model_name", "req_url_template", "body", "header", "response_extract",
                     "preset", "req_type", "is_stream", "stream_format", "stream_extract"]),
    JSON,
))  # fmt: skip
def test_any_registration_validates_or_raises_validation_error(spec: dict[str, Any]) -> None:
    assume(spec)
    with contextlib.suppress(ValidationError):
        WorkerSpec.model_validate(spec)


@FAST
@given(depth=st.integers(min_value=1, max_value=400), prompt=ANY_TEXT)
def test_deeply_nested_values_render_or_raise_template_error(depth: int, prompt: str) -> None:
    messages: Any = prompt
    for _ in range(depth):
        messages = [messages]
    plan = compile_request("POST", "http://w/x", {"X-M": "{MESSAGES}"}, {"m": "{MESSAGES}"})
    try:
        rendered = plan.render({MESSAGES: messages, USER_PROMPT: prompt})
    except TemplateError:
        return
    assert rendered.body is not None
    assert orjson.loads(rendered.body)["m"] == messages
