"""The `--baseline REF` rows: the gateway of another commit, served from its exported tree.

`git archive REF | tar -x` puts the commit's files in the run's work dir (no worktree, no git
bookkeeping; removed with the work dir). That tree's gateway runs as `python -m gateway serve`
with the tree as its working directory and first on PYTHONPATH, so that `gateway`, `registry`
and `templates` all come from it (the venv's editable install points at another checkout, and
`python -m` puts the working directory before PYTHONPATH). A one-off `python -c` with the same
environment proves it before anything is measured. It gets its own Redis, so the two gateways'
registrations never mix, and only the `serve` flags its own CLI knows.
"""

import dataclasses
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import stack
from bench.procs import BenchError, Processes, free_port, pinned
from bench.stack import REPO, Target

PACKAGES = ("gateway", "registry", "templates")
_GIT_TIMEOUT_S = 60.0
_PYTHON_TIMEOUT_S = 30.0
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


@dataclass(frozen=True, slots=True)
class Baseline:
    """An exported commit whose gateway is measured next to the current one."""

    ref: str  # as given on the command line; it names the rows
    commit: str  # the full hash REF resolved to when the run started
    tree: Path
    gateway_file: Path  # what `import gateway` gives in the tree's environment
    serve_flags: frozenset[str]  # the flags the tree's `gateway serve` accepts

    def row(self, name: str) -> str:
        """Return the name of the baseline row measured like row `name`."""
        return f"{name}@{self.ref}"


def prepare(ref: str, into: Path, repo: Path = REPO) -> Baseline:
    """Export `ref` of `repo` into `into`; check that its gateway imports from there."""
    commit = export_ref(ref, into, repo)
    return Baseline(ref, commit, into, imported_from(into), serve_flags(into))


def export_ref(ref: str, into: Path, repo: Path = REPO) -> str:
    """Write the tree of commit `ref` into the directory `into`; return the commit's hash."""
    resolved = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if resolved.returncode != 0:
        raise BenchError(
            f"--baseline {ref}: git does not know that commit in {repo}; "
            "give a branch, tag, sha or an expression such as main~3 (see `git log --oneline`)"
        )
    commit = resolved.stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    # The archive of this project is a few MiB at most: held in memory, then untarred.
    archive = _run(["git", "-C", str(repo), "archive", "--format=tar", commit], None)
    untar = archive
    if archive.returncode == 0:
        untar = _run(["tar", "-x", "-C", str(into)], archive.stdout)
    if untar.returncode != 0:
        errors = untar.stderr.decode(errors="replace").strip()
        raise BenchError(f"--baseline {ref}: exporting {commit[:10]} failed: {errors}")
    if not (into / "gateway" / "__init__.py").is_file():
        raise BenchError(
            f"--baseline {ref}: commit {commit[:10]} has no gateway/__init__.py; "
            "give a commit of this project that has the gateway package"
        )
    return commit


def imported_from(tree: Path) -> Path:
    """Return `gateway.__file__` as the tree's gateway process sees it; fail if not the tree's."""
    code = "import json, " + ", ".join(PACKAGES)
    code += "; print(json.dumps([" + ", ".join(f"{p}.__file__" for p in PACKAGES) + "]))"
    result = _python(tree, "-c", code)
    if result.returncode != 0:
        raise BenchError(
            f"the baseline tree {tree} does not import with this venv's python:\n"
            f"{result.stderr.strip()[-1500:]}"
        )
    files = [Path(f).resolve() for f in json.loads(result.stdout.strip().splitlines()[-1])]
    stray = [str(f) for f in files if not f.is_relative_to(tree.resolve())]
    if stray:
        raise BenchError(
            f"the baseline's python imports {', '.join(stray)} from outside its tree {tree}: "
            "its PYTHONPATH or working directory is wrong, so it would measure other code"
        )
    return files[0]


def serve_flags(tree: Path) -> frozenset[str]:
    """Return the flags that the tree's `gateway serve` accepts, read from its --help."""
    result = _python(tree, "-m", "gateway", "serve", "--help")
    if result.returncode != 0:
        raise BenchError(
            f"the baseline's `python -m gateway serve --help` failed in {tree}:\n"
            f"{(result.stderr or result.stdout).strip()[-1500:]}"
        )
    return frozenset(_FLAG.findall(result.stdout))


def serve_command(
    baseline: Baseline, port: int, redis_url: str
) -> tuple[list[str], dict[str, str]]:
    """Return the baseline's serve command and environment: unknown flags go as GATEWAY_* env."""
    args, env = ["serve"], stack.child_env(baseline.tree)
    for flag, value in stack.serve_options(port, redis_url).items():
        if flag in baseline.serve_flags:
            args += [flag, value]
        else:
            env["GATEWAY_" + flag.removeprefix("--").replace("-", "_").upper()] = value
    return [sys.executable, "-m", "gateway", *args], env


def start_gateways(
    procs: Processes, baseline: Baseline, redis_url: str, upstream: Target, cpu: int | None
) -> dict[str, Target]:
    """Start the baseline gateway, register both bench workers, check both routes."""
    port = free_port()
    cmd, env = serve_command(baseline, port, redis_url)
    name = baseline.row("gateway")
    served = stack.launch_gateway(procs, name, pinned(cmd, cpu), port, env=env, cwd=baseline.tree)
    at = f", at {baseline.ref} ({baseline.commit[:10]})"
    gateway = dataclasses.replace(served, name=name, what=served.what + at)
    try:
        stack.register_worker(gateway, upstream.url)
        openai = stack.register_openai_worker(gateway, stack.openai_base(upstream))
    except BenchError as exc:
        raise BenchError(f"the baseline gateway ({baseline.ref}): {exc}") from exc
    openai = dataclasses.replace(openai, name=baseline.row("gateway-openai"), what=openai.what + at)
    stack.check_gateway(gateway)
    stack.check_openai(openai)
    return {"gateway": gateway, "gateway-openai": openai}


def _python(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run this venv's python in `tree` with the environment its gateway process gets."""
    try:
        return subprocess.run(
            [sys.executable, *args],
            cwd=tree,
            env=stack.child_env(tree),
            capture_output=True,
            text=True,
            timeout=_PYTHON_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`python {' '.join(args)}` in {tree} took over {exc.timeout}s") from exc


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = _run(["git", "-C", str(repo), *args], None)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def _run(cmd: list[str], stdin: bytes | None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            cmd, input=stdin, capture_output=True, timeout=_GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{' '.join(cmd)} failed: {exc}") from exc
