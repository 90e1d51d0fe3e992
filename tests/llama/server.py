"""A real llama.cpp `llama-server` with a tiny generated model, as session fixtures.

`llama_server` serves a model that never emits EOS (every answer ends on its token limit:
finish_reason "length"); `llama_server_eos` one that ends a greedy answer by itself after a
few tokens (finish_reason "stop"). Each starts once per session, on first use, on a free port.

Without the binary (tests/llama/build.py) the tests that use them are skipped, except in CI
(CI or GATEWAY_REQUIRE_LLAMA set), where a missing binary fails them: CI never skips silently.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.llama.build import BINARY_ENV, BUILD_COMMAND, binary_path, runs
from tests.llama.make_tiny_gguf import write_model

MODEL = "tiny"  # the alias the server answers to (-a)
CONTEXT = 2048  # -c: shared by the slots
SLOTS = 4  # -np
START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class LlamaServer:
    """One running llama-server: where it listens and what it serves."""

    base_url: str  # http://127.0.0.1:PORT
    model: str
    ends_by_itself: bool  # True: finish_reason "stop"; False: always "length"
    model_path: Path
    log_path: Path
    started_s: float  # from spawn to a 200 on /health
    pid: int = 0  # the server's process

    @property
    def openai_url(self) -> str:
        """The base URL an OpenAI client (or the `openai` preset) wants: ending in /v1."""
        return f"{self.base_url}/v1"


def require_binary() -> Path:
    """Return the llama-server binary; skip the test without one (fail it in CI)."""
    binary = binary_path()
    if runs(binary):
        return binary
    why = (
        f"llama-server is not built at {binary}; build it once with `{BUILD_COMMAND}` "
        f"(about 6 min, into the user cache; or point {BINARY_ENV} at a llama-server)"
    )
    if os.environ.get("CI") or os.environ.get("GATEWAY_REQUIRE_LLAMA") == "1":
        pytest.fail(why + " (CI or GATEWAY_REQUIRE_LLAMA is set: the llama tests must run)")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503 while the model loads
        time.sleep(0.02)
    raise RuntimeError(f"llama-server not healthy in {START_TIMEOUT_S:g}s:\n{_tail(log_path)}")


def _serve(
    root: Path,
    *,
    ends_by_itself: bool,
    seed: int = 0,
    slots: int = SLOTS,
    context: int = CONTEXT,
) -> Iterator[LlamaServer]:
    binary = require_binary()
    eos_after = "m" if ends_by_itself else None
    model_path = write_model(root / "tiny.gguf", seed=seed, eos_after=eos_after)
    log_path = root / "llama-server.log"
    # Another process may take the port between this probe and the bind; the start then
    # fails loudly with the server's own log, which is rare enough not to retry.
    port = _free_port()
    command = [
        str(binary),
        *("-m", str(model_path), "-a", MODEL, "--host", "127.0.0.1", "--port", str(port)),
        *("-c", str(context), "-np", str(slots), "-t", "1"),
        *("--embeddings", "--metrics", "--no-webui"),
    ]
    with log_path.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, proc, log_path)
        yield LlamaServer(
            base_url=base_url,
            model=MODEL,
            ends_by_itself=ends_by_itself,
            model_path=model_path,
            log_path=log_path,
            started_s=time.monotonic() - started,
            pid=proc.pid,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A llama-server whose model never ends an answer by itself (finish_reason "length")."""
    yield from _serve(tmp_path_factory.mktemp("llama"), ends_by_itself=False)


@pytest.fixture(scope="session")
def llama_server_eos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A llama-server whose model ends a greedy answer after a few tokens ("stop")."""
    yield from _serve(tmp_path_factory.mktemp("llama-eos"), ends_by_itself=True)


# The model for streams resumed on another server: seed 1 answers in a cycle of nine letters
# ("btqwnfjeg..."), so text sent twice or left out at a cut shows (seed 0 answers "mmmm...").
# Each slot holds 4,096 tokens, so an answer can be long enough to kill its server midway.
STORY_SEED = 1
STORY_SLOTS = 2
STORY_CONTEXT = 8192


def story_server(root: Path) -> Iterator[LlamaServer]:
    """A llama-server for resumed streams (its own process, for a test that kills it)."""
    return _serve(
        root, ends_by_itself=False, seed=STORY_SEED, slots=STORY_SLOTS, context=STORY_CONTEXT
    )


@pytest.fixture(scope="session")
def llama_story_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LlamaServer]]:
    """Two llama-servers with the same model (`story_server`), for streams moved between them."""
    first = story_server(tmp_path_factory.mktemp("llama-story-a"))
    second = story_server(tmp_path_factory.mktemp("llama-story-b"))
    try:
        yield [next(first), next(second)]
    finally:
        first.close()
        second.close()


def context_overflow_prompt() -> str:
    """A prompt longer than any slot's context (one token per byte, bar a few merges)."""
    return "a " * CONTEXT


_WORD = re.compile(r"[a-z ]*")


def is_tiny_text(text: str) -> bool:
    """Whether `text` looks like the tiny model's output: lowercase letters and spaces only."""
    return _WORD.fullmatch(text) is not None
