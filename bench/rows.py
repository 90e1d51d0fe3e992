"""The rows of `python -m bench`: which servers one run starts, and what each row drives.

`gateway` and `gateway-openai` are one gateway process, pinned to the server CPU, on its seed
route and on its OpenAI route. `gateway-rr4` and `gateway-prefix4` are the same process on
its seed route again, for a model of 4 workers (one upstream, 4 URLs) balanced round-robin
and by prefix: what prefix affinity costs per request, in the same run. `gateway-alias` asks
for an alias of two models (one worker each, weights 1:1), `gateway-fallback` for a model
whose only worker is down, answered by its fallback: what each indirection costs per request
against `gateway`, in the same process. `gateway-xN` is
`serve --processes N`: N processes need every core, so it runs unpinned. `litellm` is the
optional peer of bench/streams/peer.py, pinned to the server CPU like the gateway, skipped
with the install command when it is missing.
With `--baseline REF`, `gateway@REF` and `gateway-openai@REF` are the same two rows served by
REF's gateway (bench/baseline.py), on the same CPU, each measured right after its current row.
"""

import dataclasses
from dataclasses import dataclass

from bench import stack
from bench.baseline import Baseline, start_gateways
from bench.procs import BenchError, Processes, free_port
from bench.stack import Target
from bench.streams import peer

ROWS = (
    "direct",
    "bare",
    "gateway",
    "gateway-openai",
    "gateway-messages",
    "gateway-responses",
    "gateway-rr4",
    "gateway-prefix4",
    "gateway-alias",
    "gateway-fallback",
    "gateway-xN",
    "litellm",
)
# Not load rows but measurements of their own after them, through the `gateway` process:
# time to first token by routing strategy over prefix-caching workers (bench/cache_aware.py).
PHASES = ("cache-aware", "cache-aware-llama")
LATENCY_ROWS = frozenset({"direct", "bare", "gateway", "gateway-openai"})  # also at 1 connection
VERSUS = ("gateway-openai", "gateway")  # one process each, held against LiteLLM's one worker
_GATEWAY_ROWS = frozenset(
    {
        "gateway",
        "gateway-openai",
        "gateway-messages",
        "gateway-responses",
        "gateway-rr4",
        "gateway-prefix4",
        "gateway-alias",
        "gateway-fallback",
        "gateway-xN",
        *PHASES,
    }
)
BASELINE_ROWS = ("gateway", "gateway-openai")  # the rows a --baseline run measures twice


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run starts: the wanted rows, the upstream kind, the CPUs and the N of -xN."""

    rows: frozenset[str]
    upstream: str
    processes: int
    load_cpu: int | None
    server_cpu: int | None
    baseline: Baseline | None = None
    baseline_redis_url: str = ""  # the baseline gateway's own Redis


def measured_at_one(row: str) -> bool:
    """Return True when `row` (a baseline row too) is also measured at 1 connection."""
    return row.partition("@")[0] in LATENCY_ROWS


def start(procs: Processes, redis_url: str, plan: Plan) -> tuple[dict[str, Target], str]:
    """Start the servers of the wanted rows; return them by row (ROWS, then PHASES), and the
    upstream."""
    direct, upstream_kind = stack.start_upstream(procs, plan.upstream, plan.load_cpu)
    started = {"direct": direct}
    if "bare" in plan.rows:
        started["bare"] = stack.start_bare_proxy(procs, direct.url, plan.server_cpu)
    if plan.rows & _GATEWAY_ROWS:
        started.update(_start_gateways(procs, redis_url, direct, plan))
    if "litellm" in plan.rows:
        litellm = _start_litellm(procs, direct, plan.server_cpu)
        if litellm is not None:
            started["litellm"] = litellm
    ordered: dict[str, Target] = {}
    for row in (*ROWS, *PHASES):
        if row in plan.rows and row in started:
            ordered[row] = started[row]
        if plan.baseline is not None and row in plan.rows and row in BASELINE_ROWS:
            ordered[plan.baseline.row(row)] = started[plan.baseline.row(row)]
    return ordered, upstream_kind


def _start_gateways(
    procs: Processes, redis_url: str, direct: Target, plan: Plan
) -> dict[str, Target]:
    """Start one gateway and register both bench workers through it, then the N-process one."""
    gateway = stack.start_gateway(procs, redis_url, plan.server_cpu)
    stack.register_worker(gateway, direct.url)
    openai = stack.register_openai_worker(gateway, stack.openai_base(direct))
    stack.check_gateway(gateway)
    stack.check_openai(openai)
    started = {"gateway": gateway, "gateway-openai": openai}
    for name, target in stack.translated_rows(openai).items():
        if name in plan.rows:
            stack.check_translated(target)
            started[name] = target
    for name, balancing in (("rr4", "round_robin"), ("prefix4", "prefix")):
        if f"gateway-{name}" in plan.rows:
            pool = stack.register_pool(gateway, direct.url, name, balancing)
            stack.check_gateway(pool)
            started[pool.name] = pool
    if "gateway-alias" in plan.rows:
        started["gateway-alias"] = _alias_row(gateway, direct)
    if "gateway-fallback" in plan.rows:
        started["gateway-fallback"] = _fallback_row(gateway)
    for phase in PHASES:
        if phase in plan.rows:
            started[phase] = dataclasses.replace(gateway, name=phase)
    if plan.baseline is not None:
        before = start_gateways(
            procs, plan.baseline, plan.baseline_redis_url, direct, plan.server_cpu
        )
        started.update({plan.baseline.row(row): target for row, target in before.items()})
    if "gateway-xN" in plan.rows:
        # Started after the registration, each of its processes loads both workers before it
        # listens, instead of learning about them from a change event while being measured.
        started["gateway-xN"] = _start_processes(procs, redis_url, plan.processes)
    return started


def _alias_row(gateway: Target, direct: Target) -> Target:
    """Register two models of one worker each and an alias over them, weights 1:1."""
    halves = [f"{stack.MODEL}-alias-{side}" for side in ("a", "b")]
    for index, model in enumerate(halves):
        stack.register_template_worker(gateway, model, f"{direct.url}?alias={index}")
    alias = f"{stack.MODEL}-alias"
    stack.put_model_settings(gateway, alias, {"alias": [{"model": m, "weight": 1} for m in halves]})
    what = "llm-gateway, seed route, an alias of 2 models (1 worker each), weights 1:1"
    target = Target("gateway-alias", what, gateway.url, gateway.child, stack.seed_body(alias))
    stack.check_gateway(target)
    return target


def _fallback_row(gateway: Target) -> Target:
    """Register a model whose one worker listens nowhere, falling back to the bench model;
    wait until the probes mark it down, so every request takes the `no_worker` fallback."""
    down = f"{stack.MODEL}-down"
    stack.register_template_worker(gateway, down, f"http://127.0.0.1:{free_port()}/api/generate")
    stack.put_model_settings(gateway, down, {"fallbacks": [stack.MODEL]})
    stack.wait_worker_state(gateway, down, "down")
    what = "llm-gateway, seed route, a model whose worker is down, answered by its fallback"
    target = Target("gateway-fallback", what, gateway.url, gateway.child, stack.seed_body(down))
    stack.check_gateway(target)
    return target


def _start_processes(procs: Processes, redis_url: str, processes: int) -> Target:
    """Start `gateway serve --processes N`, unpinned, and check that it answers."""
    name = f"gateway-x{processes}"
    many = stack.start_gateway(
        procs, redis_url, None, name=name, extra=["--processes", str(processes)]
    )
    what = f"llm-gateway --processes {processes}, seed route, UNPINNED (shares CPUs with load)"
    target = dataclasses.replace(many, name=name, what=what)
    stack.check_gateway(target)
    return target


def _start_litellm(procs: Processes, direct: Target, cpu: int | None) -> Target | None:
    """Start LiteLLM's proxy as the peer row, or say why there is none and return None."""
    command = peer.binary()
    if command is None:
        print(f"bench: no litellm row; {peer.MISSING} (or: python -m bench --install-peers)")
        return None
    base = stack.openai_base(direct)
    try:
        litellm = peer.start_litellm(
            procs, command, base, procs.log_dir, cpu, model=stack.OPENAI_MODEL
        )
        stack.check_openai(litellm)
    except BenchError as exc:
        print(f"bench: LiteLLM did not start; no litellm row. {exc}")
        # Stopped now, so a half-started peer does not load the server CPU during the rows.
        for child in [c for c in procs.children if c.name == "litellm"]:
            procs.stop(child)
        return None
    what = f"LiteLLM {peer.version()} proxy, 1 worker (side venv)"
    return dataclasses.replace(litellm, what=what)
