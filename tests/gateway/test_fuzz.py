"""A fuzz run of every route against a real gateway: malformed, oversized, wrongly typed,
deeply nested and badly encoded bodies, wrong content types and methods, raw garbage.

What must hold: no 5xx caused by the gateway, no change to the registry or the API keys from
a refused request, and the gateway serves normally afterwards. The number of inputs tried is
printed (run with -s to see it) and bounded so the run stays fast.
"""

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from gateway.state import CATALOGUE
from tests.conftest import Gateway, GatewayFactory, WorkerFactory
from tests.gateway.test_seed_api import seed_registration
from tests.workers import FakeWorker

MAX_BODY = 64 * 1024
SEED = 20240607

# One answer that holds every shape the presets extract from (chat, completion, embeddings,
# Ollama), so the workers answer well whatever the fuzzed request was: any 5xx is the gateway's.
UNIVERSAL = orjson.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "model": "w",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "text": "ok"}],
        "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}],
        "message": {"role": "assistant", "content": "ok"},
        "response": "ok",
        "embeddings": [[1.0]],
        "done": True,
    }
)

WEIRD: list[Any] = [
    None, True, False, 0, -1, 1.5, 1e308, -1e308, 10**19, "", " ", "x", "x" * 20_000,
    "\u0000", "\u202e\u200b", "{USER_PROMPT}", "<MODEL_NAME>", "../../etc/passwd",
    [], [None], [[]], {}, {"a": {"b": []}}, [1, "a", None, {}],
]  # fmt: skip

STRINGS = [
    "", " ", "\u0000", "\t\n\r", "é漢字🙂", "a" * 5000, "{BOGUS}", "{USER_PROMPT}", "%00",
    "http://", "http://[::1", "http://{USER_PROMPT}/x", "file:///etc/passwd", "gopher://x/",
    "http://169.254.169.254/latest", "http://x:99999/", "http://u:p@h/x", "$..*", "$[",
    "a..b", "[", "$.a[?(@.b ==", "' OR 1=1 --",
]  # fmt: skip

MALFORMED = [
    b"{", b"}", b"[", b'{"a":', b'{"a" 1}', b"{'a': 1}", b'{"a": 1,}', b"[1,]", b"nul",
    b"NaN", b'{"a": NaN}', b'{"a": Infinity}', b"1e99999", b'"unterminated', b"{} trailing",
    b"\xef\xbb\xbf{}", b"\x00", b" ", b"\n", b'{"a": "\\ud800"}', b'{"a": "\\x41"}',
    b'{"a":1}{"b":2}', b"[" * 20 + b"]" * 19, b'{"a": 01}', b'{"a": .5}',
]  # fmt: skip

BAD_UTF8 = [
    b'{"input": "\xff\xfe", "model_name": "seed-m"}',
    b'{"model": "oa\xc0\xaf", "messages": []}',
    b'{"\xed\xa0\x80": 1}',
    b"\xfe\xff\x00{\x00}",
    '{"input": "é", "model_name": "seed-m"}'.encode("latin-1"),
    '{"input": "x"}'.encode("utf-16"),
]

CONTENT_TYPES = [
    None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/xml", "application/json; charset=latin-1", "application/json; charset=utf-16",
    "*/*", "application/json\x7f", "image/png",
]  # fmt: skip

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


def nested(depth: int, inner: Any = 1) -> Any:
    value = inner
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def deep_raw(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -7, 2**53, 3.25, -0.0])
    if kind in (2, 3, 4):
        return rng.choice([*STRINGS, "hi", "role", "user", "model"])
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["model", "messages", "input", "prompt", "model_name", "stream", "options", "role"]
    return {
        rng.choice(keys + STRINGS[:6]): random_json(rng, depth + 1) for _ in range(rng.randrange(5))
    }


@dataclass
class Outcome:
    tried: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    gateway_5xx: list[str] = field(default_factory=list)
    changed_by_refusal: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    content: bytes | None
    content_type: str | None
    what: str
    extra_headers: tuple[tuple[str, str], ...] = ()


def bases(worker: FakeWorker) -> dict[str, dict[str, Any]]:
    msgs = [{"role": "user", "content": "hi"}]
    register = seed_registration("fuzz-new", worker)
    return {
        "/api/server/register": register,
        "/api/server/offline": {"model_name": "ghost", "req_url_template": "http://127.0.0.1:9/x"},
        "/api/server/keys": {"name": "k", "requests_per_minute": 100},
        "/api/server/models/{name}": {"fallbacks": ["oa"], "balancing": "prefix"},
        "/api/v1/chat/completions": {"input": "hi", "model_name": "seed-m"},
        "/v1/chat/completions": {"model": "oa", "messages": msgs},
        "/v1/completions": {"model": "oa", "prompt": "hi"},
        "/v1/embeddings": {"model": "oa", "input": "hi"},
        "/api/chat": {"model": "ol", "messages": msgs, "stream": False},
        "/api/generate": {"model": "ol", "prompt": "hi", "stream": False},
        "/api/embed": {"model": "ol", "input": "hi"},
    }


def mutations(base: dict[str, Any], rng: random.Random) -> Iterator[tuple[str, Any]]:
    """Wrongly typed, missing, extra and nested variants of a valid body."""
    for key in base:
        for weird in WEIRD:
            yield f"{key}={str(weird)[:20]!r}", {**base, key: weird}
        yield f"without {key}", {k: v for k, v in base.items() if k != key}
        yield f"{key} nested 99", {**base, key: nested(99)}
        yield f"{key} nested 150", {**base, key: nested(150)}
    for key in (
        "model",
        "model_name",
        "input",
        "prompt",
        "req_url_template",
        "response_extract",
        "fallbacks",
    ):
        if key in base:
            for text in STRINGS:
                yield f"{key}={text[:20]!r}", {**base, key: text}
    if "messages" in base:
        for weird in WEIRD[:14]:
            content = [{"role": "user", "content": weird}]
            yield f"message content {weird!r:.20}", {**base, "messages": content}
            role = [{"role": weird, "content": "x"}]
            yield f"message role {weird!r:.20}", {**base, "messages": role}
            yield f"message {weird!r:.20}", {**base, "messages": [weird]}
        for stream in (True, False):
            yield f"stream={stream}", {**base, "stream": stream}
    if "body" in base:
        for weird in [*WEIRD, nested(150), {"input": "{USER_PROMPT}", "t": "{TOP_P}"}]:
            yield f"template body {weird!r:.20}", {**base, "body": weird}
        for name, value in (("X-A", "a\r\nb"), ("Bad Name", "x"), ("X-B", "\u0000"), ("X-C", "é")):
            yield f"header {name!r}", {**base, "header": {name: value}}
        yield "preset", {**base, "preset": "nonesuch"}
        yield "get with body", {**base, "req_type": "GET"}
    yield "unknown field", {**base, "zzz_unknown": 1}
    for _ in range(12):
        yield "random", random_json(rng)
    for _ in range(8):
        mixed = dict(base)
        mixed[rng.choice(list(base))] = random_json(rng)
        yield "random field", mixed


def concrete(path: str) -> str:
    """A catalogue path with its parameters filled in."""
    return path.replace("{key_id}", "0123456789abcdef").replace("{name}", "fuzz-model")


def cases(gateway: Gateway, worker: FakeWorker) -> list[Case]:
    rng = random.Random(SEED)
    found: list[Case] = []
    body_bases = bases(worker)
    catalogue = list(gateway.app[CATALOGUE])
    paths = sorted({concrete(e.path) for e in catalogue})
    for endpoint in catalogue:
        path = concrete(endpoint.path)
        method = endpoint.method
        json_type = "application/json"
        base = body_bases.get(endpoint.path)
        for raw in MALFORMED:
            found.append(Case(method, path, raw, json_type, f"malformed {raw[:12]!r}"))
        for raw in BAD_UTF8:
            found.append(Case(method, path, raw, json_type, "bad utf-8"))
        found.append(Case(method, path, b"x" * (MAX_BODY + 1), json_type, "oversized"))
        found.append(
            Case(method, path, b'{"a": "' + b"x" * MAX_BODY * 2 + b'"}', json_type, "oversized")
        )
        for depth in (10_000, 1100, 300, 201):
            found.append(Case(method, path, deep_raw(depth), json_type, f"nested {depth}"))
            found.append(
                Case(method, path, b"[" * depth + b"]" * depth, json_type, f"nested {depth}")
            )
        if base is not None:
            valid = orjson.dumps(base)
            for content_type in CONTENT_TYPES:
                found.append(Case(method, path, valid, content_type, f"type {content_type}"))
            for what, body in mutations(base, rng):
                try:
                    content = orjson.dumps(body)
                except orjson.JSONEncodeError:
                    continue
                found.append(Case(method, path, content, json_type, what))
            for key in list(base):
                for depth in (99, 100, 101, 250, 253, 260, 1000):
                    content = orjson.dumps({**base, key: nested(min(depth, 250))})
                    if depth > 250:
                        content = orjson.dumps(base)[:-1] + b',"deep":' + deep_raw(depth) + b"}"
                    found.append(Case(method, path, content, json_type, f"{key} nested {depth}"))
    for path in paths:
        for method in METHODS:
            found.append(Case(method, path, None, None, "method"))
            found.append(Case(method, path, b"{}", "application/json", "method with body"))
    for query in ("model_name=%ff%fe", "model_name=" + "a" * 4000, "x=1&x=2"):
        found.append(Case("GET", f"/api/server/workers?{query}", None, None, "query"))
    for key_id in ("x", "0" * 16, "%00", "..%2F..", "a" * 3000, "%C3%A9", "0123456789ABCDEF"):
        found.append(Case("DELETE", f"/api/server/keys/{key_id}", None, None, "key id"))
    for name in ("%00", "%20padded", "a%0Ab", "x" * 300, "..%2F..", "a/b/c", "%C3%A9", "%FF"):
        for method in ("GET", "PUT", "DELETE"):
            body = orjson.dumps({"fallbacks": ["oa"]}) if method == "PUT" else None
            found.append(
                Case(method, f"/api/server/models/{name}", body, "application/json", "name")
            )
    for header in ("X-Request-ID", "Authorization", "Content-Length", "Transfer-Encoding"):
        for value in ("", "x" * 4000, "Bearer", "Bearer \tx", "-1", "chunked, gzip", "é"):
            found.append(
                Case(
                    "POST",
                    "/api/v1/chat/completions",
                    orjson.dumps({"input": "x", "model_name": "seed-m"}),
                    "application/json",
                    f"header {header}",
                    ((header, value),),
                )
            )
    return found


async def snapshot(redis: Redis, prefix: str) -> tuple[Any, ...]:
    # The records themselves, not the version counter: health changes from the active
    # probes also bump the version while the fuzz runs.
    tag = "{" + prefix + "}"
    return (
        sorted((await redis.hgetall(f"{tag}:workers")).items()),
        sorted(await redis.hkeys(f"{tag}:apikeys")),
        sorted((await redis.hgetall(f"{tag}:models")).items()),
    )


WRITES = {"/api/server/register", "/api/server/offline", "/api/server/keys"}


def is_write(case: Case) -> bool:
    return case.method in ("POST", "DELETE", "PUT") and (
        case.path in WRITES or case.path.startswith(("/api/server/keys/", "/api/server/models/"))
    )


async def run_case(
    http: httpx.AsyncClient, case: Case, outcome: Outcome, redis: Redis, prefix: str
) -> None:
    headers = {name: value.encode() for name, value in case.extra_headers}
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type.encode()
    before = await snapshot(redis, prefix) if is_write(case) else None
    try:
        reply = await http.request(
            case.method, case.path, content=case.content, headers=headers or None
        )
        status = reply.status_code
    except httpx.LocalProtocolError:
        return  # httpx refuses to send it; the raw-socket test covers what httpx will not send
    except httpx.RemoteProtocolError:
        status = 0  # the server closed the connection on a request it could not parse
    outcome.tried += 1
    outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
    if status >= 500:
        detail = reply.text[:300]
        outcome.gateway_5xx.append(f"{status} {case.method} {case.path} {case.what}: {detail}")
    if before is not None and 400 <= status < 500:
        after = await snapshot(redis, prefix)
        if after != before:
            outcome.changed_by_refusal.append(f"{status} {case.method} {case.path} {case.what}")


async def test_fuzz_every_route(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, redis: Redis, key_prefix: str
) -> None:
    gateway = await make_gateway(max_request_bytes=MAX_BODY)
    template = await make_worker(name="seed")
    universal = await make_worker(name="any", raw=UNIVERSAL)
    async with gateway.client() as http:
        registrations = [
            seed_registration("seed-m", template),
            seed_registration("hdr-m", template, header={"X-Prompt": "{USER_PROMPT}"}),
            {"model_name": "oa", "preset": "openai", "req_url_template": f"{universal.url}/v1"},
            {"model_name": "ol", "preset": "ollama", "req_url_template": universal.url},
        ]
        for body in registrations:
            assert (await http.post("/api/server/register", json=body)).status_code == 200
        all_cases = cases(gateway, template)
        # The header-placeholder worker gets every prompt the seed route is fuzzed with.
        for text in [*STRINGS, "\u0001\u007f\u0085", "\x0b\x0c"]:
            body = orjson.dumps({"input": text, "model_name": "hdr-m"})
            what = f"prompt in header {text[:10]!r}"
            all_cases.append(
                Case("POST", "/api/v1/chat/completions", body, "application/json", what)
            )
        outcome = Outcome()
        limit = asyncio.Semaphore(8)

        async def guarded(case: Case) -> None:
            async with limit:
                await run_case(http, case, outcome, redis, key_prefix)

        # Writes one at a time, so a refused one can be shown to have changed nothing.
        writes = [case for case in all_cases if is_write(case)]
        for case in writes:
            await run_case(http, case, outcome, redis, key_prefix)
        await asyncio.gather(*(guarded(case) for case in all_cases if not is_write(case)))

        # Every worker the fuzz managed to register is called once on each API: whatever its
        # template, the answer is the worker's (2xx, 502, 504) or the client's fault, never a 500.
        listed = (await http.get("/api/server/workers")).json()["data"]
        # Only models whose every worker is the local fake one: the fuzz also registers workers
        # at hosts such as 169.254.169.254, which a test must not call.
        remote = {
            w["model_name"] for w in listed if not w["req_url_template"].startswith(template.url)
        }
        fuzzed = {w["model_name"] for w in listed} - remote - {"seed-m", "hdr-m", "oa", "ol"}
        for model in sorted(fuzzed):
            msgs = [{"role": "user", "content": "x"}]
            for path, body in (
                ("/api/v1/chat/completions", {"input": "x", "model_name": model}),
                ("/v1/chat/completions", {"model": model, "messages": msgs, "stream": True}),
                ("/api/generate", {"model": model, "prompt": "x"}),
            ):
                reply = await http.post(path, json=body)
                outcome.tried += 1
                outcome.statuses[reply.status_code] = outcome.statuses.get(reply.status_code, 0) + 1
                if reply.status_code == 500:
                    outcome.gateway_5xx.append(f"500 {path} on fuzzed worker {model!r}")

        print(
            f"\nfuzz: {outcome.tried} inputs over {len(list(gateway.app[CATALOGUE]))} routes "
            f"({len(fuzzed)} models registered by the fuzz were called); "
            f"statuses {dict(sorted(outcome.statuses.items()))}; "
            f"5xx: {len(outcome.gateway_5xx)}"
        )
        assert outcome.gateway_5xx == []
        assert outcome.changed_by_refusal == []

        # Still serving, on every API.
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        msgs = [{"role": "user", "content": "after"}]
        checks = [
            ("/api/v1/chat/completions", {"input": "after", "model_name": "seed-m"}),
            ("/v1/chat/completions", {"model": "oa", "messages": msgs}),
            ("/api/chat", {"model": "ol", "messages": msgs, "stream": False}),
        ]
        for path, body in checks:
            reply = await http.post(path, json=body)
            assert reply.status_code == 200, (path, reply.text)
        seed_reply = await http.post(checks[0][0], json=checks[0][1])
        assert seed_reply.json()["result"] == "seed: after"
