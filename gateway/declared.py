"""Workers declared in the config file (`[[workers]]`): read, expand `${VAR}`, validate.

Each table takes the fields of the register API. A string may refer to an environment
variable as `${NAME}` (so secrets stay out of the file); `$${` keeps a literal `${`. Every
problem of every table is reported at once, each naming its worker, never a secret's value.
Applying the workers to the registry is `registry.apply_managed`; the gateway does it at
start (`Declared`).
"""

import asyncio
import datetime
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from registry import Change, RegistryStore, StoreUnavailable, WorkerSpec, apply_managed, pause

log = logging.getLogger(__name__)

_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class WorkersError(ValueError):
    """The config file's workers are invalid; `problems` has one line per problem."""

    def __init__(self, problems: list[str], source: str = "the config file") -> None:
        super().__init__(f"invalid [[workers]] in {source}:\n  " + "\n  ".join(problems))
        self.problems = problems


def read_workers(tables: Any, environ: Mapping[str, str]) -> tuple[WorkerSpec, ...]:
    """Validate the `workers` of a config file; raise WorkersError naming every problem."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise WorkersError(["workers must be an array of tables: write each as [[workers]]"])
    problems: list[str] = []
    specs: list[WorkerSpec] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        name = table.get("model_name")
        where = f"workers[{index}]" + (f" (model_name {name!r})" if isinstance(name, str) else "")
        found: list[str] = []
        expanded = _expand(table, environ, "", found)
        if not found:  # with a variable missing, the value checks would only add noise
            try:
                spec = WorkerSpec.model_validate(expanded)
            except ValidationError as exc:
                found.extend(_describe(exc))
            else:
                first = seen.setdefault(spec.worker_id, index)
                if first != index:
                    found.append(f"same model_name and req_url_template as workers[{first}]")
                specs.append(spec)
        if "ttl_s" in table:
            found.append("ttl_s: a worker declared in the file has no heartbeat; leave it out")
        problems.extend(f"{where}: {problem}" for problem in found)
    if problems:
        raise WorkersError(problems)
    return tuple(specs)


def expand_references(value: Any, environ: Mapping[str, str]) -> Any:
    """Return `value` with `${NAME}` replaced in every string; ValueError names what is unset."""
    found: list[str] = []
    expanded = _expand(value, environ, "", found)
    if found:
        raise ValueError("; ".join(found))
    return expanded


def _expand(value: Any, environ: Mapping[str, str], path: str, found: list[str]) -> Any:
    """Return `value` with `${NAME}` replaced in every string; note what cannot be."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            escaped, name = match.groups()
            if escaped:
                return "${" + name + "}"
            if not _NAME.match(name):
                found.append(f"{path}: ${{{name}}} is not an environment variable name")
            elif name not in environ:
                found.append(f"{path}: environment variable {name} is not set")
            else:
                return environ[name]
            return ""

        return _REFERENCE.sub(replace, value)
    if isinstance(value, dict):
        return {
            key: _expand(item, environ, f"{path}.{key}" if path else key, found)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_expand(item, environ, f"{path}[{i}]", found) for i, item in enumerate(value)]
    if isinstance(value, datetime.date | datetime.time):
        found.append(f"{path}: a TOML date or time is not a JSON value; quote it")
    return value


def _describe(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        message = err["msg"].removeprefix("Value error, ")
        where = ".".join(str(part) for part in err["loc"])
        problems.append(f"{where}: {message}" if where else message)
    return problems


class Declared:
    """The file's workers, applied to the registry at start (again and again while Redis fails)."""

    def __init__(
        self,
        store: RegistryStore,
        source: str,
        specs: tuple[WorkerSpec, ...],
        on_change: Callable[[Change], None],
        *,
        retry_s: float = 2.0,
    ) -> None:
        self._store = store
        self.source = source
        self._specs = specs
        self._on_change = on_change
        self._retry_s = retry_s

    async def apply(self) -> bool:
        """Apply once; False (and a warning) when Redis could not be reached."""
        try:
            applied = await apply_managed(self._store, self.source, self._specs)
        except StoreUnavailable as exc:
            log.warning("could not apply the workers of %s yet: %s", self.source, exc)
            return False
        for change in applied.changes:
            self._on_change(change)
        log.info(
            "workers of %s applied: %d added, %d changed, %d removed, %d unchanged",
            self.source,
            len(applied.added),
            len(applied.changed),
            len(applied.removed),
            applied.unchanged,
        )
        return True

    async def retry(self, stop: asyncio.Event) -> None:
        """Apply until it succeeds or `stop` is set."""
        while not stop.is_set():
            await pause(stop, self._retry_s)
            if not stop.is_set() and await self.apply():
                return
