"""Built-in presets for well-known worker protocols, kept as readable JSON data files.

A preset names the protocol a worker speaks and, for each operation (chat, completion,
embedding), the path under the worker's base URL, the request template and where the answer
is. Clients speaking the worker's own protocol are passed through; the others are translated
with these templates, exactly as a custom template worker would be.
"""

import json
from functools import cache
from importlib import resources
from typing import Any

from templates.errors import TemplateError

PROTOCOLS = ("openai", "ollama")


@cache
def all_presets() -> dict[str, dict[str, Any]]:
    """Return every preset by name, as loaded from the JSON files."""
    found: dict[str, dict[str, Any]] = {}
    for entry in resources.files(__name__).iterdir():
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            found[data["name"]] = data
    return found


def get(name: str) -> dict[str, Any]:
    """Return preset `name`, or raise TemplateError listing the known ones."""
    preset = all_presets().get(name)
    if preset is None:
        known = ", ".join(sorted(all_presets()))
        raise TemplateError(f"unknown preset {name!r}; known presets: {known}")
    return preset
