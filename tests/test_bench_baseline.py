"""`python -m bench --baseline REF`: a commit's tree exported, and its gateway run from it."""

import subprocess
from pathlib import Path

import pytest

from bench.baseline import Baseline, export_ref, imported_from, serve_command
from bench.procs import BenchError

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")


def git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=True).stdout


def test_export_ref_writes_that_commits_files_and_no_git_dir(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    commit = export_ref("HEAD", tree)
    assert commit == git("rev-parse", "HEAD").decode().strip()
    # The commit's own file, whatever the work tree holds now.
    assert (tree / "gateway" / "__init__.py").read_bytes() == git(
        "show", "HEAD:gateway/__init__.py"
    )
    assert (tree / "registry" / "__init__.py").is_file()
    assert not (tree / ".git").exists()


def test_export_ref_names_the_unknown_ref(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"--baseline no-such-ref-x1: git does not know"):
        export_ref("no-such-ref-x1", tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


def test_exported_tree_imports_its_own_gateway_not_the_checkouts(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    export_ref("HEAD", tree)
    assert imported_from(tree) == (tree / "gateway" / "__init__.py").resolve()


def test_serve_command_gives_flags_the_old_cli_lacks_as_settings_env(tmp_path: Path) -> None:
    old = Baseline(
        "old", "0" * 40, tmp_path, tmp_path / "gateway/__init__.py", frozenset({"--port"})
    )
    cmd, env = serve_command(old, 8123, "redis://127.0.0.1:6399/0")
    assert cmd[-4:] == ["gateway", "serve", "--port", "8123"]
    assert env["GATEWAY_HOST"] == "127.0.0.1"
    assert env["GATEWAY_REDIS_URL"] == "redis://127.0.0.1:6399/0"
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path)
    assert str(ROOT) not in env["PYTHONPATH"].split(":")
