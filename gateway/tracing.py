"""W3C trace context to workers, and optional OpenTelemetry spans for requests and attempts.

A client's `traceparent` (and `tracestate`) header, when it is valid, is passed on to the
worker a request goes to, so a worker that traces joins the client's trace. With `otel_enabled`
the gateway also makes spans (the OpenTelemetry SDK, `pip install 'llm-gateway[otel]'`): one
per request (a child of the client's `traceparent`, if any) and one per attempt at a worker
(its child), exported over OTLP/HTTP to `otel_endpoint`; the worker then gets a `traceparent`
naming the attempt's span. Attributes: the model asked and the one that answered, the worker,
the try, the outcome, and the tokens (`gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
`llm_gateway.usage.estimated`).

Off (the default), the SDK is not imported and no middleware is installed: the cost is
reading one header per request.
"""

import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.endpoints import CATALOGUE, Handler
from templates.conversation import Usage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from gateway.settings import Settings
    from gateway.worker import Worker

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_TRACESTATE_MAX = 512


def incoming(request: web.Request) -> dict[str, str] | None:
    """The client's trace context headers to pass on to the worker, when they are valid."""
    value = request.headers.get("traceparent")
    if value is None:
        return None
    value = value.strip()
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    if version == "00" and rest:
        return None  # version 00 has exactly four fields
    headers = {"traceparent": value}
    state = request.headers.get("tracestate")
    if state and len(state) <= _TRACESTATE_MAX and state.isprintable():
        headers["tracestate"] = state
    return headers


class AttemptSpan:
    """One attempt at one worker, as a span; its `headers` go to the worker."""

    __slots__ = ("_span", "headers")

    def __init__(self, span: "Span") -> None:
        self._span = span
        context = span.get_span_context()
        self.headers = {
            "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-"
            f"{int(context.trace_flags):02x}"
        }

    def failed(self, reason: str, status: int | str) -> None:
        self._span.set_attribute("llm_gateway.outcome", str(status))
        self._span.set_attribute("error.type", str(status))
        self._span.set_attribute("llm_gateway.reason", reason[:500])
        self._end_error()
        self._span.end()

    def usage(self, usage: Usage, estimated: bool) -> None:
        _set_usage(self._span, usage, estimated)

    def end(self) -> None:
        self._span.end()

    def _end_error(self) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR))


class RequestSpan:
    """A request's span, the attempts made for it, and the attempt that answered."""

    __slots__ = ("_tracer", "answered", "span")

    def __init__(self, tracer: "Tracer", span: "Span") -> None:
        self._tracer = tracer
        self.span = span
        self.answered: AttemptSpan | None = None  # ended with the request, after its usage

    def attempt(self, model: str, worker: "Worker", tries: int) -> AttemptSpan:
        from opentelemetry import trace

        span = self._tracer.start_span(
            f"attempt {worker.label}",
            context=trace.set_span_in_context(self.span),
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.request.model": model,
                "llm_gateway.worker": worker.label,
                "llm_gateway.try": tries,
                "server.address": worker.label,
            },
        )
        return AttemptSpan(span)

    def succeeded(self, attempt: AttemptSpan) -> None:
        attempt._span.set_attribute("llm_gateway.outcome", "ok")
        if self.answered is not None:
            self.answered.end()
        self.answered = attempt


def note_usage(span: RequestSpan, usage: Usage, estimated: bool) -> None:
    """Put an answer's tokens on the request's span and its answering attempt's."""
    _set_usage(span.span, usage, estimated)
    if span.answered is not None:
        span.answered.usage(usage, estimated)


def _set_usage(span: "Span", usage: Usage, estimated: bool) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    if usage.cached_tokens is not None:
        span.set_attribute("gen_ai.usage.cached_tokens", usage.cached_tokens)
    span.set_attribute("llm_gateway.usage.estimated", estimated)


class Tracing:
    """The tracer of one gateway process, and the middleware that opens each request's span."""

    def __init__(self, provider: "TracerProvider", *, owned: bool) -> None:
        self.provider = provider
        self._owned = owned  # made here (and shut down here) or given by the caller
        self.tracer = provider.get_tracer("llm-gateway")

    def middleware(self) -> Any:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from gateway.observe import TRACE

        propagator = TraceContextTextMapPropagator()
        tracer = self.tracer

        @web.middleware
        async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            endpoint = request.app[CATALOGUE].find(request)
            route = endpoint.path if endpoint is not None else "unmatched"
            parent = propagator.extract(dict(request.headers))
            span = tracer.start_span(
                f"{request.method} {route}",
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes={"http.request.method": request.method, "http.route": route},
            )
            traced = RequestSpan(tracer, span)
            found = request.get(TRACE)
            if found is not None:  # where the request path finds it (Trace.span)
                found.span = traced
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except BaseException:
                status = 499
                raise
            finally:
                if found is not None:
                    if found.model is not None:
                        span.set_attribute("gen_ai.request.model", found.model[:200])
                    if found.served_model is not None:
                        span.set_attribute("gen_ai.response.model", found.served_model)
                    if found.worker is not None:
                        span.set_attribute("llm_gateway.worker", found.worker)
                    if found.tries is not None:
                        span.set_attribute("llm_gateway.tries", found.tries)
                span.set_attribute("http.response.status_code", status)
                span.set_attribute("llm_gateway.outcome", "ok" if status < 400 else str(status))
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                if traced.answered is not None:
                    traced.answered.end()
                span.end()

        return tracing_middleware

    def shutdown(self) -> None:
        """Export what is left and stop (only a provider made here)."""
        if self._owned:
            self.provider.shutdown()


def start_tracing(settings: "Settings", provider: "TracerProvider | None" = None) -> Tracing | None:
    """Return the process's Tracing when `otel_enabled` (or a provider is given), else None.

    Raises RuntimeError when tracing is on and the OpenTelemetry SDK is not installed.
    """
    if provider is not None:
        return Tracing(provider, owned=False)
    if not settings.otel_enabled:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            f"otel_enabled is set but OpenTelemetry is not installed ({exc}); "
            "pip install 'llm-gateway[otel]', or set otel_enabled = false"
        ) from None
    made = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
    exporter = (
        OTLPSpanExporter(endpoint=settings.otel_endpoint)
        if settings.otel_endpoint
        else OTLPSpanExporter()
    )
    made.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(made, owned=True)


TRACING = web.AppKey("tracing", Tracing)
