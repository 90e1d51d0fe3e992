"""The optional peer: LiteLLM's proxy in a side virtualenv, in front of the same upstream.

LiteLLM is never a project dependency. Install it with `python -m bench --install-peers`, or
`python -m venv bench/results/litellm-venv && bench/results/litellm-venv/bin/pip install
'litellm[proxy]'`; without it the harness says the peer is missing and skips the row.
"""

import json
import subprocess
import sys
from pathlib import Path

from bench import stack
from bench.procs import BenchError, Processes, free_port, pinned, wait_http

VENV = stack.REPO / "bench" / "results" / "litellm-venv"
MISSING = (
    "the optional peer LiteLLM is missing: python -m venv bench/results/litellm-venv && "
    "bench/results/litellm-venv/bin/pip install 'litellm[proxy]'"
)
BODY = stack.openai_body("s")


def binary() -> Path | None:
    """Return the side virtualenv's `litellm` command, or None when it is not installed."""
    path = VENV / "bin" / "litellm"
    return path if path.exists() else None


def version() -> str | None:
    """Return the installed LiteLLM version, read from its dist-info directory name."""
    info = next(VENV.glob("lib/python*/site-packages/litellm-*.dist-info"), None)
    return None if info is None else info.name.removeprefix("litellm-").removesuffix(".dist-info")


def install() -> None:
    """Create the side virtualenv and install LiteLLM's proxy into it (skipped when present)."""
    if binary() is not None:
        print(
            f"bench: LiteLLM {version()} is already in {stack.shown(VENV)}; remove it to reinstall"
        )
        return
    print(f"bench: installing 'litellm[proxy]' into {stack.shown(VENV)} (a few minutes)")
    for cmd in (
        [sys.executable, "-m", "venv", str(VENV)],
        [str(VENV / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
    ):
        if subprocess.run(cmd, check=False).returncode != 0:
            raise BenchError(f"installing LiteLLM failed at: {' '.join(cmd)}")


def start_litellm(
    procs: Processes,
    command: Path,
    upstream_base: str,
    workdir: Path,
    cpu: int | None,
    *,
    model: str,
) -> stack.Target:
    """Start LiteLLM's proxy with `model` as an OpenAI-compatible model at `upstream_base`."""
    # JSON is YAML: no YAML library needed here.
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": upstream_base,
                    "api_key": "x",
                },
            }
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
        # Loopback only, and bench/load.py sends no Authorization header.
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }
    path = workdir / "litellm.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    port = free_port()
    cmd = [str(command), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    env = {**stack.child_env(), "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"}
    child = procs.start("litellm", pinned(cmd, cpu), env=env)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wait_http(child, f"http://127.0.0.1:{port}/health/liveliness", timeout_s=120.0)
    body = stack.openai_body(model)
    status, raw = stack.http_post(url, body, timeout_s=30.0)
    if status != 200:
        raise BenchError(f"LiteLLM answered {status} {raw[:300]!r}:\n{child.log_tail()}")
    return stack.Target("litellm", "LiteLLM proxy (side venv)", url, child, body)
