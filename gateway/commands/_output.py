"""How commands print: JSON for scripts, aligned tables and key: value lines for people."""

import json
import sys
import time
from collections.abc import Sequence
from typing import Any


def emit_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout."""
    print(json.dumps(data, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str) -> None:
    """Print rows under headers in aligned columns, or `empty` when there are none."""
    if not rows:
        print(empty)
        return
    cells = [list(headers)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """Print `name: value` lines, names aligned."""
    width = max((len(name) for name, _ in pairs), default=0)
    for name, value in pairs:
        print(f"{(name + ':').ljust(width + 1)} {_cell(value)}")


def note(message: str) -> None:
    """Print a remark for people on stderr (stdout stays for the result)."""
    print(message, file=sys.stderr)


def when(epoch_s: float | None) -> str:
    """A Unix time as local date and time, to the second."""
    if not epoch_s:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s))


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
