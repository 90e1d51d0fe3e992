"""Rendering a worker request: placeholders typed, at any depth, in URL and headers."""

import asyncio

import orjson
import pytest

from gateway.http1 import Client, parse_url
from registry import WorkerSpec
from templates import TemplateError, compile_request, compile_worker

VALUES = {"USER_PROMPT": "hello", "MODEL_TEMPERATURE": 0.7, "MODEL_NAME": "m1"}


def render_body(body: object, values: dict[str, object] = VALUES) -> object:
    plan = compile_request("POST", "http://w/x", {}, body)
    rendered = plan.render(values)
    assert rendered.body is not None
    return orjson.loads(rendered.body)


def test_whole_string_placeholder_keeps_the_value_type() -> None:
    body = {"prompt": "{USER_PROMPT}", "temperature": "{MODEL_TEMPERATURE}"}
    assert render_body(body) == {"prompt": "hello", "temperature": 0.7}


def test_placeholder_inside_text_is_text() -> None:
    body = {"prompt": "Q: {USER_PROMPT} (t={MODEL_TEMPERATURE}, m=<MODEL_NAME>)"}
    assert render_body(body) == {"prompt": "Q: hello (t=0.7, m=m1)"}


def test_placeholders_work_at_any_depth_in_dicts_and_lists() -> None:
    body = {
        "messages": [{"role": "user", "content": "{USER_PROMPT}"}],
        "options": {
            "sampling": {"temperature": "{MODEL_TEMPERATURE}", "list": [1, ["{MODEL_NAME}"]]}
        },
        "fixed": [True, None, 3.5, "text"],
    }
    assert render_body(body) == {
        "messages": [{"role": "user", "content": "hello"}],
        "options": {"sampling": {"temperature": 0.7, "list": [1, ["m1"]]}},
        "fixed": [True, None, 3.5, "text"],
    }


def test_angle_bracket_spelling_is_the_same_placeholder() -> None:
    assert render_body({"input": "<USER_PROMPT>"}) == {"input": "hello"}


@pytest.mark.parametrize(
    "prompt",
    [
        'she said "hi" \\ then left',
        "line one\nline two\r\n\ttabbed",
        "braces {} and {USER_PROMPT} and {MODEL_NAME} and <MODEL_TEMPERATURE>",
        "unicode: 你好 🤖 \u2028 \x00",
        "",
        "@@deadbeefdeadbeef:0@@",
    ],
)
def test_prompt_passes_through_unchanged(prompt: str) -> None:
    rendered = render_body(
        {"a": "{USER_PROMPT}", "b": "pre {USER_PROMPT} post"}, {**VALUES, "USER_PROMPT": prompt}
    )
    assert rendered == {"a": prompt, "b": f"pre {prompt} post"}


def test_url_placeholders_are_url_encoded() -> None:
    plan = compile_request("GET", "http://w/gen?q={USER_PROMPT}&model={MODEL_NAME}", {}, None)
    rendered = plan.render({**VALUES, "USER_PROMPT": "a b&c=d/é"})
    assert rendered.url == "http://w/gen?q=a%20b%26c%3Dd%2F%C3%A9&model=m1"
    assert rendered.body is None


def test_header_placeholders_are_text_and_cannot_inject_headers() -> None:
    plan = compile_request(
        "POST",
        "http://w/x",
        {"X-Model": "{MODEL_NAME}", "X-Prompt": "{USER_PROMPT}"},
        {"p": "{USER_PROMPT}"},
    )
    rendered = plan.render({**VALUES, "USER_PROMPT": "evil\r\nX-Injected: 1"})
    assert rendered.headers["X-Model"] == "m1"
    assert "\n" not in rendered.headers["X-Prompt"] and "\r" not in rendered.headers["X-Prompt"]
    assert rendered.headers["Content-Type"] == "application/json"


def test_operator_content_type_is_kept() -> None:
    plan = compile_request(
        "POST", "http://w/x", {"content-type": "application/vnd+json"}, {"p": "{USER_PROMPT}"}
    )
    assert plan.render(VALUES).headers == {"content-type": "application/vnd+json"}


@pytest.mark.parametrize(
    ("method", "url", "body", "needle"),
    [
        ("POST", "http://w/x", {"p": "no prompt"}, "{USER_PROMPT}"),
        ("POST", "http://w/x", None, "{USER_PROMPT}"),
        ("POST", "http://w/x", {"p": "{USER_PROMPT}", "q": "{TOP_K}"}, "{TOP_K}"),
        ("POST", "http://w/{HOST}/x", {"p": "{USER_PROMPT}"}, "{HOST}"),
        ("GET", "http://w/x", None, "{USER_PROMPT}"),
        ("GET", "http://w/x?q={USER_PROMPT}", {"p": 1}, "GET sends no body"),
        ("PUT", "http://w/x", {"p": "{USER_PROMPT}"}, "POST or GET"),
        ("POST", "/relative/path", {"p": "{USER_PROMPT}"}, "absolute"),
        # Where the gateway connects is never up to a request (no SSRF through a prompt).
        ("GET", "http://{USER_PROMPT}/x", None, "not be filled in from the request"),
        ("GET", "http://h:{MODEL_TEMPERATURE}/x?q={USER_PROMPT}", None, "{MODEL_TEMPERATURE}"),
        ("GET", "http://user@{USER_PROMPT}", None, "not be filled in from the request"),
    ],
)
def test_bad_templates_are_refused_with_a_message_naming_the_problem(
    method: str, url: str, body: object, needle: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_request(method, url, {}, body)
    assert needle in str(caught.value)


def test_absent_value_leaves_its_member_out() -> None:
    body = {"p": "{USER_PROMPT}", "t": "{MODEL_TEMPERATURE}", "s": "t={MODEL_TEMPERATURE}"}
    # A member that is exactly an absent value is left out; inside text it is empty.
    assert render_body(body, {"USER_PROMPT": "x"}) == {"p": "x", "s": "t="}
    in_list = {"p": "{USER_PROMPT}", "list": ["{MODEL_TEMPERATURE}"]}
    assert render_body(in_list, {"USER_PROMPT": "x"}) == {"p": "x", "list": [None]}


def test_quote_before_a_placeholder_at_the_end_of_a_string_stays_json() -> None:
    """Found by the property tests: an escaped quote was taken for the string's own quote."""
    body = {"prompt": 'He said "{USER_PROMPT}', "t": '"{MODEL_TEMPERATURE}"'}
    assert render_body(body) == {"prompt": 'He said "hello', "t": '"0.7"'}


@pytest.mark.parametrize(
    ("url", "prompt", "expected"),
    [
        ("http://w/api/{USER_PROMPT}/x", "..", "http://w/api/%2E%2E/x"),
        ("http://w/api/{USER_PROMPT}/x", ".", "http://w/api/%2E/x"),
        ("http://w/api/{USER_PROMPT}", "..", "http://w/api/%2E%2E"),
        ("http://w/api/{USER_PROMPT}/x", "...", "http://w/api/%2E%2E%2E/x"),
        # Two values, or a value and the template's own dot, that make `..` together.
        ("http://w/api/{USER_PROMPT}{SYSTEM_PROMPT}/x", ".", "http://w/api/%2E%2E/x"),
        ("http://w/api/.{USER_PROMPT}/x", ".", "http://w/api/%2E%2E/x"),
        ("http://w/api/.{USER_PROMPT}/x", "", "http://w/api/%2E/x"),
        # Not a dot segment, or not in the path: left as it is.
        ("http://w/api/v{USER_PROMPT}/x", "..", "http://w/api/v../x"),
        ("http://w/api/{USER_PROMPT}/x", "a/../b", "http://w/api/a%2F..%2Fb/x"),
        ("http://w/api/x?q={USER_PROMPT}", "..", "http://w/api/x?q=.."),
        ("http://w/é/{USER_PROMPT}?q=ü", "..", "http://w/%C3%A9/%2E%2E?q=%C3%BC"),
    ],
)
def test_a_value_in_the_url_path_never_makes_a_dot_segment(
    url: str, prompt: str, expected: str
) -> None:
    plan = compile_request("GET", url, {}, None)
    assert plan.render({"USER_PROMPT": prompt, "SYSTEM_PROMPT": prompt}).url == expected


@pytest.mark.parametrize(
    ("url", "host", "target"),
    [
        ("http://w/api/{USER_PROMPT}/x?q={USER_PROMPT}", "w", "/api/%2E%2E/x?q=.."),
        ("http://w/é/{USER_PROMPT}/x", "w", "/%C3%A9/%2E%2E/x"),  # the template's own encoding
        ("http://bücher.example/{USER_PROMPT}", "xn--bcher-kva.example", "/%2E%2E"),  # IDNA
    ],
)
def test_an_encoded_dot_segment_survives_the_http_client(url: str, host: str, target: str) -> None:
    rendered = compile_request("GET", url, {}, None).render({"USER_PROMPT": ".."})
    origin = parse_url(rendered.url)
    assert (origin.host, origin.target) == (host, target)


@pytest.mark.parametrize(
    ("url", "host", "target"),
    [
        ("http://bücher.example/é?q=ü", "xn--bcher-kva.example", "/%C3%A9?q=%C3%BC"),
        ("http://w/a b/../c", "w", "/c"),  # one the client encodes: normalised, as before
        ("http://w:8080/%7E/./x", "w", "/%7E/./x"),  # one already encoded: sent as it stands
    ],
)
def test_urls_the_http_client_must_encode_are_still_encoded(
    url: str, host: str, target: str
) -> None:
    origin = parse_url(url)
    assert (origin.host, origin.target) == (host, target)


async def test_a_prompt_of_dots_reaches_the_worker_as_encoded_dots() -> None:
    """End to end: the request line a worker at /api/{USER_PROMPT}/x receives for `..`."""
    lines: list[bytes] = []

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines.append(await reader.readline())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(worker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client(connect_timeout_s=5.0)
    try:
        plan = compile_request("GET", f"http://127.0.0.1:{port}/api/{{USER_PROMPT}}/x", {}, None)
        for prompt in ("..", ".", "a b"):
            rendered = plan.render({"USER_PROMPT": prompt})
            response = await client.request("GET", rendered.url, rendered.headers, None)
            assert await response.read() == b"ok"
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    assert lines == [
        b"GET /api/%2E%2E/x HTTP/1.1\r\n",
        b"GET /api/%2E/x HTTP/1.1\r\n",
        b"GET /api/a%20b/x HTTP/1.1\r\n",
    ]


def test_model_name_in_a_preset_url_is_there_when_rendered_without_values() -> None:
    """The gateway renders a preset's URL with no values (passthrough, the worker's label)."""
    plan = compile_worker(
        url="http://h:8/models/{MODEL_NAME}/v1", preset="openai", model_name="org/llama 3"
    )
    chat = plan.operations["chat"]
    expected = "http://h:8/models/org%2Fllama%203/v1/chat/completions"
    assert chat.plan.render({}).url == expected
    assert chat.url == expected
    assert chat.plan.url.render({}, url_encode=True) == expected
    assert (
        plan.operations["embedding"].plan.render({}).url.endswith("/org%2Fllama%203/v1/embeddings")
    )
    assert plan.base_url == "http://h:8/models/org%2Fllama%203/v1"


def test_a_registered_worker_serves_its_upstream_model_name_in_the_url() -> None:
    spec = WorkerSpec(
        model_name="public-name",
        upstream_model="llama3.1:8b",
        req_url_template="http://h/models/{MODEL_NAME}/v1",
        preset="openai",
    )
    assert (
        spec.compile().operations["chat"].url == "http://h/models/llama3.1%3A8b/v1/chat/completions"
    )
    own = WorkerSpec(
        model_name="m1", req_url_template="http://h/{MODEL_NAME}/g?q={USER_PROMPT}", req_type="GET"
    )
    assert own.compile().operations["chat"].plan.render({"USER_PROMPT": "hi"}).url == (
        "http://h/m1/g?q=hi"
    )


def test_model_name_is_still_filled_per_request_when_not_given_at_compile_time() -> None:
    plan = compile_worker(url="http://h/{MODEL_NAME}/x", body={"p": "{USER_PROMPT}"})
    assert plan.operations["chat"].plan.render({"MODEL_NAME": "m2"}).url == "http://h/m2/x"


def test_fixed_url_and_headers_are_the_same_for_every_request_and_never_shared() -> None:
    body = {"input": "{USER_PROMPT}"}
    plan = compile_request("POST", "http://w/x", {"Authorization": "Bearer k"}, body)
    first = plan.render({"USER_PROMPT": "a"})
    first.headers["X-Request-ID"] = "one"  # what the request path adds to its own copy
    second = plan.render({"USER_PROMPT": "b"})
    assert second.url == first.url == "http://w/x"
    assert second.headers == {"Authorization": "Bearer k", "Content-Type": "application/json"}
    assert orjson.loads(second.body or b"") == {"input": "b"}
    head = plan.head({}, b"{}")
    assert head.headers == second.headers and head.url == "http://w/x"
    # A header or URL with a placeholder is still filled in per request.
    plan = compile_request("POST", "http://w/{MODEL_NAME}", {"X-P": "{USER_PROMPT}"}, body)
    assert plan.names == {"MODEL_NAME", "USER_PROMPT"}
    rendered = plan.render({"USER_PROMPT": "hi\nthere", "MODEL_NAME": "m"})
    assert rendered.url == "http://w/m" and rendered.headers["X-P"] == "hi there"


def test_template_values_leave_out_only_what_the_template_does_not_use() -> None:
    from templates.codecs.template import values
    from templates.conversation import Conversation, Message, Params

    conv = Conversation((Message("system", "be brief"), Message("user", "hi")), Params())
    plan = compile_request("POST", "http://w/x", {}, {"input": "{USER_PROMPT}"})
    assert plan.body is not None
    used = values(conv, plan.names)
    assert "MESSAGES" not in used and "SYSTEM_PROMPT" not in used
    assert plan.body.render(used) == plan.body.render(values(conv)) == b'{"input":"hi"}'
    everything = values(conv)
    assert everything["SYSTEM_PROMPT"] == "be brief"
    assert everything["MESSAGES"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
