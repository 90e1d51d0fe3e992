"""Rendering a worker request: placeholders typed, at any depth, in URL and headers."""

import orjson
import pytest

from templates import TemplateError, compile_request

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
