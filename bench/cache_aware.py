"""The cache-aware rows: time to first token, round-robin against prefix routing, in one run.

Two models of the same kind of workers on the bench's `gateway` process (server CPU), one
balanced `round_robin`, one `prefix`, each with its own workers so that neither warms the
other's caches. The TTFT client (bench/ttft.py, load CPU) streams the same workload at each:
`prompts` shared system prompts, a new question every request. After a warm-up pass per
model (caches filled the way each strategy fills them: the steady state of a long-running
gateway), the rounds alternate which model goes first, so both share the machine's noise.

- `cache-aware`: 4 fake workers per model (bench/prefix_worker.py), all in one process, each
  caching `cache_prefixes` of the 40 system prompts: together they hold them all, alone they
  cannot, as a KV cache holds some of the traffic's prefixes and not every one of them.
- `cache-aware-llama`: 2 llama.cpp `llama-server`s per model with the tiny test model
  (tests/llama/), which reuse the prompt prefix a slot holds from its last request
  (`cache_prompt`), reported as `usage.prompt_tokens_details.cached_tokens`.
"""

import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import stack, ttft
from bench.prefix_worker import Timing
from bench.procs import BenchError, Child, Processes, free_port, pinned, wait_http
from bench.stack import Target

STRATEGIES = ("round_robin", "prefix")
FAKE_WORKERS = 4  # per strategy
LLAMA_WORKERS = 2
LLAMA_SLOTS = 4  # -np: each slot keeps the prompt of its last request
LLAMA_CONTEXT = LLAMA_SLOTS * 2048  # -c, shared by the slots: 2,048 tokens each
# llama.cpp also keeps prompts in host memory (--cache-ram, 8 GiB by default). The tiny model's
# KV cache is ~0.5 KB a token, so every prompt fits there and any server restores any prompt:
# the row runs once without it (a slot holds its last prompt: 4 prompts a server, as a GPU's
# KV memory holds a few long prompts of a real model), once with the default.
LLAMA_VARIANTS = {"slots": 0, "cache-ram": 8192}
FAKE_WORKLOAD = ttft.Workload(prompts=40, system_chars=(2_700, 5_300), max_tokens=4)
# The tiny model's tokenizer is about a token per byte: prompts fit a 2,048-token slot.
LLAMA_WORKLOAD = ttft.Workload(prompts=8, system_chars=(1_200, 1_600), max_tokens=4)
LLAMA_CONNECTIONS = 4


@dataclass(frozen=True, slots=True)
class Setting:
    """How each pass runs: connections, seconds, rounds, and the CPU of workers and client."""

    connections: int
    duration_s: int
    warmup_s: int
    rounds: int
    load_cpu: int | None


def measure_fake(procs: Processes, gateway: Target, setting: Setting) -> dict[str, Any]:
    """Start the fake workers, register both models, measure; return the row's document."""
    timing = Timing()
    ports = [free_port() for _ in range(FAKE_WORKERS * len(STRATEGIES))]
    cmd = [sys.executable, "-m", "bench.prefix_worker", "--ports", ",".join(map(str, ports))]
    cmd += ["--cache-prefixes", str(timing.cache_prefixes)]
    child = procs.start("prefix-workers", pinned(cmd, setting.load_cpu), env=stack.child_env())
    for port in ports:
        wait_http(child, f"http://127.0.0.1:{port}/v1/models")
    bases = [f"http://127.0.0.1:{port}/v1" for port in ports]
    models = _register(gateway, "bench-cache", bases, FAKE_WORKERS)
    what = (
        f"{FAKE_WORKERS} fake workers per strategy, each an LRU of {timing.cache_prefixes} "
        f"prefixes; miss: {timing.prefill_us_per_char:g} us/char prefill, hit: "
        f"{timing.hit_ms:g} ms + the question's prefill"
    )
    return _alternate(procs, gateway, models, FAKE_WORKLOAD, setting, what)


def measure_llama(procs: Processes, gateway: Target, setting: Setting) -> dict[str, Any]:
    """Measure llama-servers with the tiny model, once holding prompts in their slots only
    and once with llama.cpp's default host-memory prompt cache; without the binary, return
    why the row was skipped."""
    from tests.llama.build import BUILD_COMMAND, binary_path, runs

    binary = binary_path()
    if not runs(binary):
        why = f"llama-server is not built at {binary} (`{BUILD_COMMAND}` builds it)"
        print(f"bench: no cache-aware-llama row; {why}")
        return {"skipped": why}
    from tests.llama.make_tiny_gguf import write_model

    model_path = write_model(procs.log_dir / "tiny.gguf")
    setting = dataclasses.replace(setting, connections=LLAMA_CONNECTIONS)
    variants = {}
    for variant, cache_ram_mib in LLAMA_VARIANTS.items():
        started = []
        for index in range(LLAMA_WORKERS * len(STRATEGIES)):
            started.append(_start_llama(procs, binary, model_path, cache_ram_mib, variant, index))
        bases = [base for base, _child in started]
        models = _register(gateway, f"bench-llama-{variant}", bases, LLAMA_WORKERS)
        what = (
            f"{LLAMA_WORKERS} llama-servers per strategy (tiny test model, {LLAMA_SLOTS} slots "
            f"of 2,048 tokens, 1 thread each, unpinned), --cache-ram {cache_ram_mib}"
        )
        variants[variant] = _alternate(procs, gateway, models, LLAMA_WORKLOAD, setting, what)
        for _base, child in started:  # the next variant gets the CPUs to itself
            procs.stop(child)
    return {"variants": variants}


def _start_llama(
    procs: Processes, binary: Path, model: Path, cache_ram_mib: int, variant: str, index: int
) -> tuple[str, Child]:
    """Start one llama-server; return its OpenAI base URL and its process once healthy."""
    port = free_port()
    cmd = [str(binary), "-m", str(model), "-a", "tiny", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "-c", str(LLAMA_CONTEXT), "-np", str(LLAMA_SLOTS)]
    cmd += ["-t", "1", "--metrics", "--no-webui", "--cache-ram", str(cache_ram_mib)]
    child = procs.start(f"llama-server-{variant}-{index}", cmd)
    wait_http(child, f"http://127.0.0.1:{port}/health")
    _wait_llama(child, f"http://127.0.0.1:{port}/health")
    return f"http://127.0.0.1:{port}/v1", child


def _wait_llama(child: Child, url: str) -> None:
    """Wait for llama-server's /health to say 200 (503 while the model loads)."""
    for _ in range(300):
        status, _raw = stack.http_get(url)
        if status == 200:
            return
        if not child.alive():
            break
        time.sleep(0.05)
    raise BenchError(f"{child.name} is not healthy:\n{child.log_tail()}")


def _register(gateway: Target, name: str, bases: list[str], per: int) -> dict[str, str]:
    """Register `per` workers per strategy as one model each; return the models by strategy."""
    models = {}
    for index, strategy in enumerate(STRATEGIES):
        model = f"{name}-{strategy.replace('_', '-')}"
        stack.register_openai_pool(gateway, model, bases[index * per : (index + 1) * per])
        stack.put_model_settings(gateway, model, {"balancing": strategy})
        models[strategy] = model
    return models


def _alternate(
    procs: Processes,
    gateway: Target,
    models: dict[str, str],
    workload: ttft.Workload,
    setting: Setting,
    what: str,
) -> dict[str, Any]:
    """Warm each model up, then measure them in alternating order; return the document."""
    url = gateway.url.removesuffix(stack.CHAT_PATH) + "/v1/chat/completions"
    warmup_s = max(1, setting.warmup_s)
    for model in models.values():
        _pass(procs, url, model, setting, warmup_s, workload, seed=0)
    samples: dict[str, list[dict[str, Any]]] = {strategy: [] for strategy in models}
    for round_index in range(setting.rounds):
        order = list(models) if round_index % 2 == 0 else list(reversed(list(models)))
        for strategy in order:
            result = _pass(
                procs,
                url,
                models[strategy],
                setting,
                setting.duration_s,
                workload,
                seed=round_index + 1,
            )
            samples[strategy].append(result)
            print(
                f"  round {round_index + 1} {models[strategy]:<26}{result['requests']:>7} req "
                f"TTFT p50 {result['ttft_ms']['p50']:.2f} ms p99 {result['ttft_ms']['p99']:.2f} ms "
                f"cached {100 * result['cached_share']:.0f}% errors {result['errors']}",
                flush=True,
            )
    return {
        "what": what,
        "workload": {
            "system_prompts": workload.prompts,
            "system_chars": list(workload.system_chars),
            "max_tokens": workload.max_tokens,
            "connections": setting.connections,
            "duration_s": setting.duration_s,
            "rounds": setting.rounds,
        },
        "strategies": {
            strategy: {**_medians(samples[strategy]), "split": _split(gateway, model)}
            for strategy, model in models.items()
        },
    }


def _pass(
    procs: Processes,
    url: str,
    model: str,
    setting: Setting,
    duration_s: int,
    workload: ttft.Workload,
    *,
    seed: int,
) -> dict[str, Any]:
    return ttft.run_subprocess(
        procs,
        url,
        model,
        setting.connections,
        duration_s,
        workload,
        seed=seed,
        cpu=setting.load_cpu,
    )


def _split(gateway: Target, model: str) -> list[float]:
    """Return each worker's share of the model's answered requests (warm-up included), as the
    gateway counted them, largest first: how evenly a strategy spread the load."""
    url = gateway.url.removesuffix(stack.CHAT_PATH) + f"/api/server/workers?model_name={model}"
    status, raw = stack.http_get(url)
    listed = json.loads(raw) if status == 200 else {}
    counts = [w["stats"]["successes"] for w in listed.get("data", ())]
    total = sum(counts)
    return sorted((round(c / total, 3) for c in counts), reverse=True) if total else []


def _medians(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the medians over rounds (and each quantile's range), and every round's figures."""

    def series(key: str) -> list[float]:
        return [s["ttft_ms"][key] for s in samples]

    return {
        "requests": sum(s["requests"] for s in samples),
        "errors": sum(s["errors"] for s in samples),
        "ttft_p50_ms": round(statistics.median(series("p50")), 3),
        "ttft_p50_range_ms": [min(series("p50")), max(series("p50"))],
        "ttft_p99_ms": round(statistics.median(series("p99")), 3),
        "ttft_p99_range_ms": [min(series("p99")), max(series("p99"))],
        "cached_share": round(statistics.median(s["cached_share"] for s in samples), 4),
        "hit_share": round(statistics.median(s["hit_share"] for s in samples), 4),
        "rounds": samples,
    }


def table(name: str, document: dict[str, Any]) -> str:
    """Render one cache-aware row: per strategy its TTFT medians, ranges and cache share."""
    if "skipped" in document:
        return f"{name}: skipped: {document['skipped']}"
    if "variants" in document:
        parts = document["variants"].items()
        return "\n\n".join(table(f"{name} ({variant})", part) for variant, part in parts)
    load = document["workload"]
    lines = [
        f"{name}: {document['what']}; {load['system_prompts']} system prompts of "
        f"{load['system_chars'][0]}-{load['system_chars'][1]} chars x new questions, "
        f"{load['connections']} connections, {load['rounds']} round(s) of {load['duration_s']} s",
        f"  {'balancing':<13}{'requests':>9}{'TTFT p50 ms':>13}{'(range)':>15}"
        f"{'p99 ms':>9}{'(range)':>15}{'cached':>8}{'hits':>6}{'errors':>8}  requests per worker",
    ]
    for strategy, row in document["strategies"].items():
        p50, p99 = row["ttft_p50_range_ms"], row["ttft_p99_range_ms"]
        lines.append(
            f"  {strategy:<13}{row['requests']:>9}{row['ttft_p50_ms']:>13.2f}"
            f"{f'{p50[0]:.1f}-{p50[1]:.1f}':>15}{row['ttft_p99_ms']:>9.2f}"
            f"{f'{p99[0]:.1f}-{p99[1]:.1f}':>15}{100 * row['cached_share']:>7.0f}%"
            f"{100 * row['hit_share']:>5.0f}%{row['errors']:>8}  "
            + "/".join(f"{100 * share:.0f}" for share in row["split"])
            + " %"
        )
    rr, prefix = (document["strategies"][s] for s in STRATEGIES)
    if rr["ttft_p50_ms"] and rr["ttft_p99_ms"]:
        lines.append(
            f"  prefix / round_robin: TTFT p50 {prefix['ttft_p50_ms'] / rr['ttft_p50_ms']:.2f}x, "
            f"p99 {prefix['ttft_p99_ms'] / rr['ttft_p99_ms']:.2f}x"
        )
    return "\n".join(lines)


def measure(procs: Processes, phases: dict[str, Target], setting: Setting) -> dict[str, Any]:
    """Measure each wanted phase through its gateway; return the documents by phase."""
    done: dict[str, Any] = {}
    if "cache-aware" in phases:
        done["cache-aware"] = measure_fake(procs, phases["cache-aware"], setting)
    if "cache-aware-llama" in phases:
        done["cache-aware-llama"] = measure_llama(procs, phases["cache-aware-llama"], setting)
    return done
