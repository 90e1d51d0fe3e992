"""Built-in presets for well-known worker protocols, kept as readable JSON data files.

A preset names the protocol a worker speaks and, for each operation (chat, completion,
embedding), the path under the worker's base URL, the request template and where the answer
is. Clients speaking the worker's own protocol are passed through; the others are translated
with these templates, exactly as a custom template worker would be.

A preset also knows its URL forms (`base_url`): the endpoint paths an operator may paste
instead of the base URL (they mean the same worker), and path endings that cannot be right for
it; and where its models list is (`models`), which registration with "verify" reads.
"""

import json
from functools import cache
from importlib import resources
from typing import Any

from templates.errors import TemplateError

PROTOCOLS = ("openai", "ollama", "anthropic")


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


def base_url(name: str, url: str) -> str:
    """Return the base URL that `url`, the base or one of preset `name`'s endpoint URLs, means.

    Trailing slashes go too. Raise TemplateError when `url` cannot be right for the preset:
    a query or fragment (the gateway appends paths to a base URL), or a path ending that
    belongs to another protocol. Only what is certainly wrong is refused: hosted
    OpenAI-compatible APIs live under many bases (`/api/v1`, `/v1beta/openai`, `/openai/...`).
    """
    forms = get(name)["base_url"]
    example, endpoints = forms["example"], forms["endpoints"]
    if "?" in url or "#" in url:
        raise TemplateError(
            f"req_url_template of a worker with preset {name!r} is the server's base URL, "
            f"which the gateway appends its own paths to (e.g. {example} + {endpoints[0]}), so "
            "it cannot carry a query string (?...) or a fragment (#...): remove it, or register "
            "a template worker (its whole URL, a body and a response_extract) for a server "
            "that needs a query parameter"
        )
    _, sep, rest = url.partition("://")
    if not sep:
        return url  # not an absolute URL: compiling the worker says so
    url = url.rstrip("/")
    slash = rest.find("/")
    path = rest[slash:].rstrip("/") if slash >= 0 else ""
    base_path = path
    # Until none is left, so that the base of a base is itself (a spec's URL is normalised
    # when it is validated and again when it is compiled).
    stripped = True
    while stripped:
        stripped = False
        for endpoint in sorted(endpoints, key=len, reverse=True):
            if base_path.endswith(endpoint):
                base_path = base_path[: -len(endpoint)].rstrip("/")
                stripped = True
                break
    for rule in forms["wrong_endings"]:
        for wrong in rule["paths"]:
            if path.endswith(wrong) or base_path.endswith(wrong):
                raise TemplateError(
                    f"req_url_template cannot be right for preset {name!r}: its path ends in "
                    f"{wrong!r}; {rule['hint']}. A worker with preset {name!r} is registered "
                    f"with the server's base URL (e.g. {example}) or one of its endpoint URLs "
                    f"(the base + {', '.join(endpoints)})"
                )
    return url[: len(url) - (len(path) - len(base_path))]


def bases(url: str) -> dict[str, str]:
    """Return, for each preset `url` can be a URL form of, the base URL it means there."""
    found: dict[str, str] = {}
    for name in all_presets():
        try:
            found[name] = base_url(name, url)
        except TemplateError:
            continue
    return found


def models_path(name: str) -> str:
    """Return where, under the base URL, a preset `name` server lists the models it serves."""
    return str(get(name)["models"]["path"])


def listed_models(name: str, doc: Any) -> list[str] | None:
    """Return the model names in a preset `name` server's models list; None if `doc` is not one."""
    spec = get(name)["models"]
    entries = doc.get(spec["list"]) if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        return None
    names: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        for key in spec["names"]:
            value = entry.get(key)
            if isinstance(value, str) and value not in names:
                names.append(value)
    return names


def lists_model(name: str, names: list[str], model: str) -> bool:
    """Whether `model` is among `names` as preset `name` servers spell it (Ollama: ":latest")."""
    tag = get(name)["models"].get("default_tag")
    if tag is None:
        return model in names
    suffix = ":" + tag

    def bare(item: str) -> str:
        return item.removesuffix(suffix)

    return bare(model) in {bare(item) for item in names}
