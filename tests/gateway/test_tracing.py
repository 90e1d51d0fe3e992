"""Trace context: a client's `traceparent` reaches the worker; OpenTelemetry spans when on.

The spans are exported to the SDK's in-memory exporter, through the provider the application
is given (as an embedding program would give its own).
"""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.conftest import GatewayFactory
from tests.model_server import ModelServer, answer_words

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
PROMPT = "tell me a story"


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, ModelServer]]:
    found = {
        "openai": ModelServer(protocol="openai", name="openai"),
        "ollama": ModelServer(protocol="ollama", name="ollama"),
        "broken": ModelServer(protocol="openai", name="broken", status=500),
    }
    for server in found.values():
        await server.start()
    yield found
    for server in found.values():
        await server.stop()


async def _register(http: Any, model: str, server: ModelServer) -> None:
    body = {"model_name": model, "req_url_template": server.base_url, "preset": server.protocol}
    assert (await http.post("/api/server/register", json=body)).status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_the_clients_traceparent_reaches_the_worker_without_otel(
    make_gateway: GatewayFactory, servers: dict[str, ModelServer], path: str
) -> None:
    gateway = await make_gateway()
    async with gateway.client() as http:
        await _register(http, "m", servers["openai"])
        headers = {"traceparent": PARENT, "tracestate": "vendor=abc"}
        assert (await http.post(path, json=chat("m"), headers=headers)).status_code == 200
        seen = servers["openai"].headers_received[-1]
        assert seen["traceparent"] == PARENT and seen["tracestate"] == "vendor=abc"
        bad = {"traceparent": "00-not-a-trace-01"}
        assert (await http.post(path, json=chat("m"), headers=bad)).status_code == 200
        assert "traceparent" not in servers["openai"].headers_received[-1]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made


def _by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_spans_for_the_request_and_its_attempt_carry_model_worker_and_tokens(
    make_gateway: GatewayFactory,
    servers: dict[str, ModelServer],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    kind: str,
    stream: bool,
) -> None:
    gateway = await make_gateway(tracer_provider=provider)
    async with gateway.client() as http:
        await _register(http, "m", servers[kind])
        reply = await http.post(
            "/v1/chat/completions", json=chat("m", stream), headers={"traceparent": PARENT}
        )
        assert reply.status_code == 200, reply.text
    spans = exporter.get_finished_spans()
    (request,) = _by_name(spans, "POST /v1/chat/completions")
    (attempt,) = _by_name(spans, "attempt ")
    assert request.context is not None and attempt.context is not None
    assert f"{request.context.trace_id:032x}" == TRACE_ID  # the client's trace
    assert request.parent is not None and f"{request.parent.span_id:016x}" == "b7ad6b7169203331"
    assert attempt.parent is not None and attempt.parent.span_id == request.context.span_id
    words = len(answer_words(kind, PROMPT))
    for span in (request, attempt):
        attributes = span.attributes or {}
        assert attributes["gen_ai.usage.input_tokens"] == 4
        assert attributes["gen_ai.usage.output_tokens"] == words
        assert attributes["llm_gateway.usage.estimated"] is False
        assert attributes["llm_gateway.worker"].startswith(servers[kind].url)
    assert (request.attributes or {})["gen_ai.request.model"] == "m"
    assert (request.attributes or {})["http.response.status_code"] == 200
    assert (attempt.attributes or {})["llm_gateway.outcome"] == "ok"
    # The worker's parent is the attempt.
    sent = servers[kind].headers_received[-1]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{attempt.context.span_id:016x}-01"


async def test_a_failed_attempt_is_a_span_with_its_outcome(
    make_gateway: GatewayFactory,
    servers: dict[str, ModelServer],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    gateway = await make_gateway(tracer_provider=provider)
    async with gateway.client() as http:
        await _register(http, "m", servers["broken"])
        await _register(http, "m", servers["openai"])
        for _ in range(2):  # round robin: one of the two requests tries the broken one first
            assert (await http.post("/v1/chat/completions", json=chat("m"))).status_code == 200
    attempts = _by_name(exporter.get_finished_spans(), "attempt ")
    assert len(attempts) == 3
    (failed,) = [s for s in attempts if (s.attributes or {})["llm_gateway.outcome"] == "500"]
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["llm_gateway.worker"].startswith(servers["broken"].url)
    assert "gen_ai.usage.input_tokens" not in (failed.attributes or {})


async def test_an_error_before_any_worker_is_a_request_span_with_its_status(
    make_gateway: GatewayFactory, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = await make_gateway(tracer_provider=provider)
    async with gateway.client() as http:
        reply = await http.post("/v1/chat/completions", json=chat("nobody"))
    assert reply.status_code == 404
    (request,) = exporter.get_finished_spans()
    assert (request.attributes or {})["http.response.status_code"] == 404
    assert (request.attributes or {})["llm_gateway.outcome"] == "404"
