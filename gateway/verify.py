"""Call a worker once before it is stored, to check it answers as registered ("verify": true).

A preset worker is asked for its models list (`openai`: GET {base}/models, `ollama`: GET
{base}/api/tags) and must list the model it serves. A template worker is sent its own
template with the prompt "ping", and its answer must hold what response_extract (or, for a
streaming one, stream_extract) points at.

The call is bounded like any call to a worker: the worker's `timeout_s` capped at
VERIFY_TIMEOUT_S for the whole exchange, the answer read up to `max_response_bytes`, no
redirect followed. It goes only where the worker's own operations go (the host the allow-list
check passed). Whatever the worker sent is redacted of the worker's own secrets before it is
quoted. A refusal is 422 when the worker answered, but not as registered (a 4xx, a redirect,
not the JSON expected, the model not listed, the extract path not found); 502 when it could
not be reached, answered 5xx or too much; 504 when it did not answer in time.
"""

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout
from gateway.redact import Redactor
from registry import WorkerSpec
from templates import (
    MESSAGES,
    MODEL_NAME,
    MODEL_TEMPERATURE,
    STREAM,
    USER_PROMPT,
    ExtractError,
    Operation,
    decoder,
    presets,
)
from templates.codecs import TemplateAnswers

VERIFY_TIMEOUT_S = 10.0  # a registration waits no longer than this for the worker
PROMPT = "ping"
_READ_BYTES = 64 * 1024
_SHOWN_MODELS = 20  # of a models list quoted in a refusal
_SHOWN_CHARS = 100  # of each model name quoted


@dataclass(frozen=True, slots=True)
class Limits:
    max_response_bytes: int
    max_stream_line_bytes: int
    temperature: float  # {MODEL_TEMPERATURE} of the test prompt


async def verify_worker(session: aiohttp.ClientSession, spec: WorkerSpec, limits: Limits) -> None:
    """Call the worker once; raise a GatewayError saying how it differs from its registration."""
    probe = _Probe(session, spec, limits)
    if spec.preset is None:
        await probe.template()
    else:
        await probe.models(spec.preset)


class _Probe:
    def __init__(self, session: aiohttp.ClientSession, spec: WorkerSpec, limits: Limits) -> None:
        self._session = session
        self._spec = spec
        self._limits = limits
        self._plan = spec.compile()
        self._redact = Redactor.of(spec.header.values(), (spec.req_url_template, spec.health_url))
        self._timeout_s = min(spec.timeout_s, VERIFY_TIMEOUT_S)

    async def models(self, preset: str) -> None:
        served = self._spec.served_model
        path = presets.models_path(preset)
        what = f"GET {URL(self._plan.base_url + path, encoded=True).path}"
        # The worker's own headers (its credentials), as its operations send them.
        head = self._plan.operations["chat"].plan.render({MODEL_NAME: served})
        headers = {k: v for k, v in head.headers.items() if k.lower() != "content-type"}
        raw = await self._call(what, "GET", self._plan.base_url + path, headers, None)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        names = presets.listed_models(preset, doc)
        if names is None:
            raise InvalidRequest(
                f"verify: {what} did not answer with a models list (it began with "
                f"{self._redact.quote(raw, 120)!r}); is req_url_template the base URL of "
                f"a server speaking the {preset!r} protocol?"
            )
        if not presets.lists_model(preset, names, served):
            raise InvalidRequest(
                f"verify: the worker does not serve the model {served!r}; {what} lists "
                f"{self._listing(names)}. Register the name the worker uses (as model_name, or "
                "as upstream_model to keep your own model_name)"
            )

    async def template(self) -> None:
        op = self._plan.operations["chat"]
        values: dict[str, Any] = {
            USER_PROMPT: PROMPT,
            MESSAGES: [{"role": "user", "content": PROMPT}],
            MODEL_TEMPERATURE: self._limits.temperature,
            MODEL_NAME: self._spec.served_model,
            STREAM: op.streams == "always",
        }
        http = op.plan.render(values)
        what = f"{http.method} {URL(http.url, encoded=True).path}"
        raw = await self._call(what, http.method, http.url, http.headers, http.body)
        try:
            if op.streams == "always":
                self._stream_text(op, raw)
            else:
                assert isinstance(op.codec, TemplateAnswers)
                op.codec.answer(raw)
        except ExtractError as exc:
            field = "stream_extract" if op.streams == "always" else "response_extract"
            raise InvalidRequest(
                f"verify: the worker's answer to the prompt {PROMPT!r} does not fit the "
                f"registration: {exc.describe(self._redact)}; fix {field} (or the template)"
            ) from None

    def _stream_text(self, op: Operation, raw: bytes) -> None:
        """Check a streamed answer: every event is JSON, and some hold the stream_extract path."""
        line_bytes = self._limits.max_stream_line_bytes
        events = decoder(op.stream_format or "sse", max_line_bytes=line_bytes)
        assert isinstance(op.codec, TemplateAnswers)
        extractor = op.codec.chunk_text
        found = False
        for payload in [*events.feed(raw), *events.close()]:
            if payload == b"[DONE]":
                break
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise ExtractError(
                    f"a streamed chunk is not JSON ({exc})", payload.decode(errors="replace")
                ) from None
            if isinstance(doc, dict) and doc.get("error"):
                raise ExtractError(
                    "the worker streamed an error", payload.decode(errors="replace"), "it said"
                )
            if extractor is not None and extractor.text_or_none(doc) is not None:
                found = True
        if not found:
            path = extractor.path if extractor is not None else ""
            raise ExtractError(
                f"no streamed chunk has a value at {path!r}", raw.decode(errors="replace")
            )

    async def _call(
        self, what: str, method: str, url: str, headers: dict[str, str], body: bytes | None
    ) -> bytes:
        """Make the one request; return the answer of a 2xx, else raise the refusal."""
        timeout_s = self._timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                async with self._session.request(
                    method,
                    URL(url, encoded=True),  # rendered URLs are encoded already
                    headers=headers,
                    data=body,
                    allow_redirects=False,  # a worker's answer never picks where the gateway goes
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                ) as response:
                    status = response.status
                    raw = await self._read(what, response)
        except TimeoutError:
            raise UpstreamTimeout(
                f"verify: {what} had no answer within {timeout_s:g}s; check that the worker "
                "is running and not overloaded, or register without verify"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            reason = self._redact.quote(str(exc) or type(exc).__name__)
            raise UpstreamError(
                f"verify: could not reach the worker for {what} ({reason}); check "
                "req_url_template and that the worker is running"
            ) from None
        if status < 300:
            return raw
        raise self._refusal(what, status, raw)

    async def _read(self, what: str, response: aiohttp.ClientResponse) -> bytes:
        limit = self._limits.max_response_bytes
        body = bytearray()
        async for chunk in response.content.iter_chunked(_READ_BYTES):
            body += chunk
            if len(body) > limit:
                raise UpstreamError(
                    f"verify: the worker's answer to {what} is larger than the "
                    f"{limit}-byte limit (max_response_bytes)"
                )
        return bytes(body)

    def _refusal(self, what: str, status: int, raw: bytes) -> GatewayError:
        if status < 400:
            return InvalidRequest(
                f"verify: {what} answered a redirect (HTTP {status}), which the gateway does "
                "not follow; register the URL it points at"
            )
        said = self._redact.quote(raw, 200)
        if status >= 500:
            return UpstreamError(f"verify: {what} answered HTTP {status}: {said!r}")
        hint = {
            401: "check the credentials in header",
            403: "check the credentials in header",
            404: "check req_url_template (and the preset)",
        }.get(status, "check req_url_template, header and body")
        return InvalidRequest(f"verify: {what} answered HTTP {status}: {said!r}; {hint}")

    def _listing(self, names: list[str]) -> str:
        if not names:
            return "no model at all"
        shown = ", ".join(repr(self._redact.quote(n, _SHOWN_CHARS)) for n in names[:_SHOWN_MODELS])
        more = len(names) - _SHOWN_MODELS
        return shown + (f" and {more} more" if more > 0 else "")
