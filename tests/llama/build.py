"""Build llama.cpp's `llama-server` once into a cache directory outside the repository.

The source is the llama.cpp tree vendored in the `llama-cpp-python` sdist on PyPI, so the
build needs pip, cmake and a C++ compiler, and nothing from the web besides that sdist (the
UI flags stop llama.cpp from fetching its web UI). Idempotent: when the binary is there and
answers `--version`, nothing is done. Standard library only, so it runs before any install.

usage: python tests/llama/build.py        (or: make llama-server)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
BINARY_ENV = "GATEWAY_LLAMA_SERVER"
BUILD_COMMAND = "make llama-server"
JOBS = 2
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
)


def cache_dir() -> Path:
    """Return this version's cache directory (under XDG_CACHE_HOME, else ~/.cache)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "llm-gateway" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def binary_path() -> Path:
    """Return where `llama-server` is (GATEWAY_LLAMA_SERVER, else the cache directory)."""
    override = os.environ.get(BINARY_ENV)
    return Path(override) if override else cache_dir() / "bin" / "llama-server"


def runs(binary: Path) -> bool:
    """Say whether `binary --version` exits 0."""
    if not binary.is_file():
        return False
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, timeout=30)
    except OSError:
        return False
    return done.returncode == 0


def _step(what: str, cmd: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        sys.exit(
            f"llama-server build: {what} failed (exit {done.returncode}); "
            f"last lines of {log}:\n" + "\n".join(tail)
        )


def build(target: Path) -> None:
    """Download the sdist, build `llama-server` and install it at `target`."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            sys.exit(
                f"llama-server build: `{tool}` not found (apt-get install cmake build-essential)"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    cache = cache_dir()
    log = cache / "build.log"
    log.write_text("")
    print(
        f"building llama-server from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} "
        f"(about 6 min on 2 cores; log: {log})",
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as tmp:
        work = Path(tmp)
        # Only the package itself as source: its build backend (pip reads the sdist's
        # metadata) may come as wheels, which keeps the download at ~15 s instead of ~60 s.
        _step(
            "download",
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                "llama-cpp-python",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
                "-d",
                str(work),
            ],
            log,
        )
        (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            sys.exit(
                f"llama-server build: {sdist.name} has sha256 {digest}, expected {SDIST_SHA256}"
            )
        with tarfile.open(sdist) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(work, filter="data")
            else:  # Python before 3.11.4; the archive's sha256 is checked above
                tar.extractall(work)
        source = work / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
        out = work / "build"
        _step("configure", ["cmake", "-S", str(source), "-B", str(out), *CMAKE_FLAGS], log)
        _step(
            "compile", ["cmake", "--build", str(out), "--target", "llama-server", f"-j{JOBS}"], log
        )
        staged = target.with_name(target.name + ".new")
        shutil.copy2(out / "bin" / "llama-server", staged)
        staged.replace(target)
    if not runs(target):
        sys.exit(f"llama-server build: {target} was built but `--version` fails; see {log}")
    size_mb = target.stat().st_size / 1e6
    print(f"built {target} ({size_mb:.1f} MB) in {time.monotonic() - started:.0f} s", flush=True)


def main() -> None:
    target = binary_path()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # Two builds at once (two checkouts, two CI jobs) would share the cache: one waits.
    with (cache / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if runs(target):
            print(f"llama-server ready: {target}")
            return
        build(target)


if __name__ == "__main__":
    main()
