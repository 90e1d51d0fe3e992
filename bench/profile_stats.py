"""Reading profiles: find or install py-spy, and rank functions by own time.

py-spy writes collapsed stacks (`frame;frame;leaf count`, one line per distinct stack), which
speedscope or flamegraph.pl render as a flame graph; cProfile writes pstats. Both are turned
into the same short list: own time (the function itself was on top) and total time (it was
anywhere on the stack), as a share of all samples or of all profiled seconds.
"""

import pstats
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_SITE_MARKERS = ("/site-packages/", "/lib/python3")


@dataclass(frozen=True, slots=True)
class Entry:
    """One function: its own time (self) and its time including callees, as % of the total."""

    function: str
    own_pct: float
    total_pct: float


def find_py_spy(install: bool) -> tuple[str | None, str]:
    """Return the py-spy binary (installing it into this venv if asked) and a note."""
    candidates = [Path(sys.executable).parent / "py-spy"]
    found = shutil.which("py-spy")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.exists():
            return str(path), f"py-spy at {path}"
    if not install:
        return None, "py-spy is not installed"
    print("bench: py-spy is missing; installing it into this virtualenv (pip install py-spy)")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "pip install py-spy did not finish within 300s"
    path = candidates[0]
    if done.returncode != 0 or not path.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return None, "pip install py-spy failed: " + " / ".join(tail)
    return str(path), f"py-spy installed at {path}"


def py_spy_command(binary: str, pid: int, duration_s: int, output: Path) -> list[str]:
    """Return the py-spy command sampling `pid` for `duration_s` into collapsed stacks."""
    return [
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(duration_s),
        "--rate",
        "400",
        "--nonblocking",  # do not pause the gateway for each sample
        "--function",  # one frame per function, not per line
        "--format",
        "raw",
        "--output",
        str(output),
    ]


def top_from_collapsed(path: Path, limit: int) -> tuple[list[Entry], list[Entry], int]:
    """Read py-spy's collapsed stacks; return the top functions and files by own time."""
    own: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        by_file[_file_of(frames[-1])] += count
        for frame in set(frames):
            total[frame] += count
    if samples == 0:
        return [], [], 0
    entries = [
        Entry(name, 100.0 * n / samples, 100.0 * total[name] / samples)
        for name, n in own.most_common(limit)
    ]
    files = [Entry(name, 100.0 * n / samples, 0.0) for name, n in by_file.most_common(limit)]
    return entries, files, samples


def top_from_pstats(path: Path, limit: int) -> tuple[list[Entry], float]:
    """Read cProfile stats; return the top functions by own time and the total seconds."""
    stats = pstats.Stats(str(path))
    table = stats.stats  # type: ignore[attr-defined]
    rows = [(key, value[2], value[3]) for key, value in table.items()]
    total_s = sum(own_s for _, own_s, _ in rows) or 1.0
    rows.sort(key=lambda row: row[1], reverse=True)
    entries = [
        Entry(_pstats_name(key), 100.0 * own_s / total_s, 100.0 * cum_s / total_s)
        for key, own_s, cum_s in rows[:limit]
    ]
    return entries, total_s


def format_top(entries: list[Entry], title: str) -> str:
    """Render the entries as an aligned text table."""
    lines = [title, f"{'own %':>7} {'total %':>8}  function"]
    lines += [f"{e.own_pct:7.1f} {e.total_pct:8.1f}  {e.function}" for e in entries]
    return "\n".join(lines)


def format_files(files: list[Entry]) -> str:
    """Render own time summed per source file."""
    return "\n".join(["own % by file", *(f"{e.own_pct:7.1f}  {e.function}" for e in files)])


def _file_of(frame: str) -> str:
    where = frame.partition(" (")[2].rstrip(")")
    return where.rpartition(":")[0] or where or frame


def _short(frame: str) -> str:
    """Shorten `func (/long/path/site-packages/pkg/mod.py:12)` to `func (pkg/mod.py:12)`."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    for marker in _SITE_MARKERS:
        index = where.rfind(marker)
        if index >= 0:
            where = where[index + len(marker) :]
            if marker == "/lib/python3":
                where = "stdlib/" + where.partition("/")[2]
            break
    else:
        repo = str(Path(__file__).resolve().parent.parent) + "/"
        where = where.replace(repo, "")
    return f"{name} ({where}"


def _pstats_name(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    return _short(f"{function} ({filename}:{line})")
