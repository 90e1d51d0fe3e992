"""Start the parts under test: the upstream, the bare proxy and the gateway (with its Redis)."""

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import upstream
from bench.procs import BenchError, Child, Processes, free_port, pinned, wait_http

REPO = Path(__file__).resolve().parent.parent
MODEL = "bench"
CHAT_PATH = "/api/v1/chat/completions"
CHAT_BODY = json.dumps({"input": "hello", "model_name": MODEL}, separators=(",", ":")).encode()
OPENAI_MODEL = "bench-openai"


def openai_body(model: str) -> bytes:
    """Return the non-streamed OpenAI chat body every OpenAI-speaking row sends."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    return json.dumps(body, separators=(",", ":")).encode()


OPENAI_BODY = openai_body(OPENAI_MODEL)


@dataclass(frozen=True, slots=True)
class Target:
    """A server the load generator drives with `body`, and the process group whose CPU counts."""

    name: str
    what: str
    url: str
    child: Child
    body: bytes = CHAT_BODY


def child_env(root: Path = REPO) -> dict[str, str]:
    """Return this environment without GATEWAY_* settings, with the packages of `root` first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    # Another tree's packages must not be shadowed by this repo's, wherever it was on the path.
    others = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join([str(root), *others])
    return env


def start_upstream(procs: Processes, kind: str, cpu: int | None) -> tuple[Target, str]:
    """Start nginx (kind "nginx", or "auto" when installed) or the Python upstream."""
    port = free_port()
    cmd = None
    if kind in ("auto", "nginx"):
        cmd = upstream.nginx_command(port, procs.log_dir / "nginx")
        if cmd is None and kind == "nginx":
            raise BenchError("--upstream nginx: nginx is not on PATH (apt-get install nginx)")
    used = "nginx" if cmd is not None else "python"
    if cmd is None:
        cmd = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
    child = procs.start("upstream", pinned(cmd, cpu), env=child_env())
    base = f"http://127.0.0.1:{port}"
    wait_http(child, base + upstream.PATH)
    for path, body, expected in (
        (upstream.PATH, CHAT_BODY, upstream.ANSWER),
        (upstream.OPENAI_PATH, OPENAI_BODY, upstream.OPENAI_ANSWER),
    ):
        status, raw = http_post(base + path, body)
        if status != 200 or raw != expected:
            raise BenchError(f"the {used} upstream answered {path}: {status} {raw[:200]!r}")
    return Target("direct", f"{used} upstream, no proxy", base + upstream.PATH, child), used


def openai_base(direct: Target) -> str:
    """Return the upstream's OpenAI base URL: clients append /chat/completions to it."""
    return direct.url.removesuffix(upstream.PATH) + "/v1"


def start_bare_proxy(procs: Processes, upstream_url: str, cpu: int | None) -> Target:
    """Start `bench.bare_proxy` in front of the upstream and check that it forwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.bare_proxy", "--port", str(port), "--target", upstream_url]
    child = procs.start("bare-proxy", pinned(cmd, cpu), env=child_env())
    url = f"http://127.0.0.1:{port}{CHAT_PATH}"
    wait_http(child, url)
    status, raw = http_post(url, CHAT_BODY)
    if status != 200 or raw != upstream.ANSWER:
        raise BenchError(f"the bare proxy answered {status} {raw[:200]!r}")
    return Target("bare", "bare aiohttp proxy (bench/bare_proxy.py)", url, child)


def serve_options(port: int, redis_url: str) -> dict[str, str]:
    """Return the `serve` flags every benchmarked gateway gets, with their values."""
    return {"--host": "127.0.0.1", "--port": str(port), "--redis-url": redis_url}


def gateway_command(
    port: int, redis_url: str, *, cprofile_to: Path | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """Return the command serving the gateway, optionally wrapped in cProfile."""
    args = ["serve"]
    for flag, value in serve_options(port, redis_url).items():
        args += [flag, value]
    args += extra
    if cprofile_to is not None:
        return [sys.executable, "-m", "bench.cprofile_gateway", str(cprofile_to), *args]
    return [sys.executable, "-m", "gateway", *args]


def start_gateway(
    procs: Processes,
    redis_url: str,
    cpu: int | None,
    *,
    name: str = "gateway",
    cprofile_to: Path | None = None,
    extra: Sequence[str] = (),
) -> Target:
    """Start the gateway as a subprocess (`extra`: more `serve` flags) and wait until ready."""
    port = free_port()
    cmd = gateway_command(port, redis_url, cprofile_to=cprofile_to, extra=extra)
    return launch_gateway(procs, name, pinned(cmd, cpu), port, env=child_env())


def launch_gateway(
    procs: Processes, name: str, cmd: list[str], port: int, *, env: dict[str, str], cwd: Path = REPO
) -> Target:
    """Start the gateway command `cmd` listening on `port`; return it once /readyz says 200."""
    child = procs.start(name, cmd, env=env, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    wait_http(child, base + "/healthz")
    _wait_ready(child, base + "/readyz")
    return Target("gateway", "llm-gateway, seed template worker", base + CHAT_PATH, child)


def _wait_ready(child: Child, url: str, timeout_s: float = 30.0) -> None:
    """Wait for /readyz to say 200: the registry view is loaded and Redis answers."""
    deadline = time.monotonic() + timeout_s
    status, raw = 0, b""
    while time.monotonic() < deadline and child.alive():
        status, raw = http_get(url)
        if status == 200:
            return
        time.sleep(0.1)
    raise BenchError(
        f"{child.name} is not ready after {timeout_s:g}s ({status} {raw[:200]!r}):\n"
        f"{child.log_tail()}"
    )


def register_worker(gateway: Target, upstream_url: str) -> None:
    """Register the seed-style template worker pointing at the upstream."""
    register_template_worker(gateway, MODEL, upstream_url)


def register_openai_worker(gateway: Target, base_url: str) -> Target:
    """Register an `openai` preset worker at `base_url`; return the gateway's OpenAI route."""
    spec = {
        "model_name": OPENAI_MODEL,
        "preset": "openai",
        "req_url_template": base_url,
        "owner": "bench",
    }
    _register(gateway, spec)
    url = gateway.url.removesuffix(CHAT_PATH) + upstream.OPENAI_PATH
    what = "llm-gateway, OpenAI passthrough (openai preset worker)"
    return Target("gateway-openai", what, url, gateway.child, OPENAI_BODY)


MESSAGES_BODY = json.dumps(
    {"model": OPENAI_MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]},
    separators=(",", ":"),
).encode()
RESPONSES_BODY = json.dumps(
    {"model": OPENAI_MODEL, "input": "hello", "store": False}, separators=(",", ":")
).encode()


def translated_rows(openai: Target) -> dict[str, Target]:
    """The Anthropic Messages and Responses routes, both answered by the openai worker
    (translated both ways: the row to hold against gateway-openai, its passthrough)."""
    base = openai.url.removesuffix(upstream.OPENAI_PATH)
    return {
        "gateway-messages": Target(
            "gateway-messages",
            "llm-gateway, Anthropic /v1/messages translated to the openai worker",
            base + "/v1/messages",
            openai.child,
            MESSAGES_BODY,
        ),
        "gateway-responses": Target(
            "gateway-responses",
            "llm-gateway, /v1/responses (store false) translated to the openai worker",
            base + "/v1/responses",
            openai.child,
            RESPONSES_BODY,
        ),
    }


def check_translated(target: Target) -> None:
    """Fail early unless `target` answers 200 with the upstream's text in it."""
    status, raw = http_post(target.url, target.body)
    if status != 200 or (b"assistant" not in raw and b"output_text" not in raw):
        raise BenchError(f"{target.name} answered {status} {raw[:300]!r}")


def register_pool(
    gateway: Target, upstream_url: str, name: str, balancing: str, workers: int = 4
) -> Target:
    """Register `workers` template workers of one model, balanced by `balancing`.

    They all point at the one upstream, told apart by a query string, so the rows of two
    strategies differ only in how the gateway picks among them. Return the seed route's row.
    """
    model = f"{MODEL}-{name}"
    for index in range(workers):
        register_template_worker(gateway, model, f"{upstream_url}?w={index}")
    put_model_settings(gateway, model, {"balancing": balancing})
    what = f"llm-gateway, seed route, {workers} workers, balancing={balancing}"
    return Target(f"gateway-{name}", what, gateway.url, gateway.child, seed_body(model))


def seed_body(model: str) -> bytes:
    """Return the seed route's bench request for `model`."""
    return json.dumps({"input": "hello", "model_name": model}, separators=(",", ":")).encode()


def register_template_worker(gateway: Target, model: str, url: str) -> None:
    """Register one seed-style template worker of `model` at `url`."""
    spec = {
        "model_name": model,
        "req_url_template": url,
        "body": {"input": "{USER_PROMPT}", "model_name": "{MODEL_NAME}"},
        "response_extract": "data.items[].attributes.answer",
        "owner": "bench",
    }
    _register(gateway, spec)


def register_openai_pool(gateway: Target, model: str, bases: Sequence[str]) -> None:
    """Register one `openai` preset worker of `model` per base URL (each ending in /v1)."""
    for base in bases:
        spec = {"model_name": model, "preset": "openai", "req_url_template": base}
        _register(gateway, {**spec, "owner": "bench"})


def put_model_settings(gateway: Target, model: str, settings: dict[str, Any]) -> None:
    """Set `model`'s settings through the admin API (PUT /api/server/models/{name})."""
    url = gateway.url.removesuffix(CHAT_PATH) + f"/api/server/models/{model}"
    status, raw = http_put(url, json.dumps(settings).encode())
    if status != 200:
        raise BenchError(f"setting {settings} on {model!r} failed: {status} {raw[:300]!r}")


def wait_worker_state(gateway: Target, model: str, state: str, timeout_s: float = 30.0) -> None:
    """Wait until every worker of `model` is in health `state` (e.g. "down") on `gateway`."""
    url = gateway.url.removesuffix(CHAT_PATH) + f"/api/server/workers?model_name={model}"
    deadline = time.monotonic() + timeout_s
    states: list[Any] = []
    while time.monotonic() < deadline:
        status, raw = http_get(url)
        listed = _json(raw)
        if status == 200 and isinstance(listed, dict):
            states = [w.get("health", {}).get("state") for w in listed.get("data", ())]
            if states and all(s == state for s in states):
                return
        time.sleep(0.2)
    raise BenchError(f"the workers of {model!r} are {states}, not {state!r}, after {timeout_s:g}s")


def _register(gateway: Target, spec: dict[str, Any]) -> None:
    url = gateway.url.removesuffix(CHAT_PATH) + "/api/server/register"
    status, raw = http_post(url, json.dumps(spec).encode())
    if status != 200:
        raise BenchError(
            f"registering bench worker {spec['model_name']!r} failed: {status} {raw[:300]!r}"
        )


def check_gateway(gateway: Target) -> None:
    """Fail unless the gateway answers the bench request with the upstream's text."""
    _check(gateway, lambda answer: answer.get("result"))


def check_openai(target: Target) -> None:
    """Fail unless `target` answers its OpenAI chat request with the upstream's text."""
    _check(target, _openai_content)


def _check(target: Target, text_of: Callable[[dict[str, Any]], Any]) -> None:
    status, raw = http_post(target.url, target.body)
    answer: Any = _json(raw)
    if status != 200 or not isinstance(answer, dict) or text_of(answer) != upstream.ANSWER_TEXT:
        raise BenchError(
            f"{target.name} answered {status} {raw[:300]!r}:\n{target.child.log_tail()}"
        )


def _openai_content(answer: dict[str, Any]) -> Any:
    """Return choices[0].message.content, or None when the answer is not shaped so."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    return message.get("content") if isinstance(message, dict) else None


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET `url`; return the status and the raw answer, error statuses included."""
    return _exchange(urllib.request.Request(url), timeout_s)


def http_post(url: str, body: bytes, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """POST JSON `body`; return the status and the raw answer, error statuses included."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    return _exchange(request, timeout_s)


def http_put(url: str, body: bytes, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """PUT JSON `body`; return the status and the raw answer, error statuses included."""
    request = urllib.request.Request(
        url, data=body, method="PUT", headers={"Content-Type": "application/json"}
    )
    return _exchange(request, timeout_s)


def _exchange(request: urllib.request.Request, timeout_s: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:
        raise BenchError(f"{request.get_method()} {request.full_url} failed: {exc}") from exc


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def shown(path: Path) -> str:
    """Return `path` relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
