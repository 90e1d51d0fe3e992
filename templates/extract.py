"""Compile a `response_extract` path once; pull the answer text out of a worker's response.

Two spellings are accepted. The seed's short form `a.b[].c` (`[]` is the first element,
`[n]` any index) and a JSONPath starting with `$`. Paths made only of keys and indexes, in
either spelling, compile to a tuple of steps walked directly; anything richer (filters,
wildcards, slices) goes through jsonpath-ng. An empty path means the raw response text.
"""

import re
import warnings
from dataclasses import dataclass
from typing import Any

import orjson
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext.parser import parse as jsonpath_parse

from templates.errors import ExtractError, TemplateError

Step = str | int

_STEP = re.compile(
    r"""\[(?P<index>-?\d*)\]                 # [] or [3]
      | \[(?P<q>['"])(?P<quoted>.*?)(?P=q)\]  # ['key with.dots']
      | (?P<dot>\.)?(?P<name>[^.\[\]'"]+)     # key or .key
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Extractor:
    """A compiled extract path; `extract(raw)` returns the answer text."""

    path: str
    steps: tuple[Step, ...] | None  # None: raw text, or a jsonpath-ng expression below
    expr: Any = None

    @property
    def is_raw(self) -> bool:
        return self.steps is None and self.expr is None

    def extract(self, raw: bytes) -> str:
        if self.is_raw:
            return raw.decode("utf-8", errors="replace")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            snippet = raw[:120].decode("utf-8", errors="replace")
            raise ExtractError(
                f"worker answered with something that is not JSON ({exc}); "
                f"it began with {snippet!r}"
            ) from exc
        return self.extract_value(doc)

    def extract_value(self, doc: Any) -> str:
        """Return the text at the path in a parsed document, or raise ExtractError."""
        value = self.find(doc)
        if isinstance(value, str):
            return value
        if value is None:
            raise ExtractError(f"worker response has null at {self.path!r}")
        return orjson.dumps(value).decode()

    def find(self, doc: Any) -> Any:
        """Return the JSON value at the path (any type), or raise ExtractError."""
        if self.steps is not None:
            return _walk(doc, self.steps, self.path)
        if self.expr is None:
            return doc
        try:
            matches = self.expr.find(doc)
        except NotImplementedError as exc:  # an operator jsonpath-ng cannot run on this doc
            raise ExtractError(f"cannot evaluate {self.path!r} on the worker response") from exc
        if not matches:
            raise ExtractError(f"worker response has no value at {self.path!r}")
        return matches[0].value

    def text_or_none(self, doc: Any) -> str | None:
        """Return the text at the path, or None when it is absent (as in a stream's last chunk)."""
        try:
            value = self.find(doc)
        except ExtractError:
            return None
        if value is None or isinstance(value, str):
            return value
        return orjson.dumps(value).decode()


def compile_extract(path: str) -> Extractor:
    """Parse `path` once; raise TemplateError when it cannot be parsed."""
    path = path.strip()
    if not path:
        return Extractor(path, None)
    body = path[1:] if path.startswith("$") else path
    steps = _parse_simple(body, leading_dot=path.startswith("$"))
    if steps is not None:
        return Extractor(path, steps)
    if not path.startswith("$"):
        raise TemplateError(
            f"response_extract {path!r} is not a path: use a.b[].c (the first element of b) "
            "or a JSONPath such as $.choices[0].message.content"
        )
    try:
        with warnings.catch_warnings():
            # jsonpath-ng 1.8+ warns that `|` (union) goes away in 2.0; it works in 1.x, which
            # is what the project allows, and a registration must not fail on a warning.
            warnings.simplefilter("ignore", DeprecationWarning)
            expr = jsonpath_parse(path)
    except (JsonPathLexerError, JsonPathParserError) as exc:
        raise TemplateError(f"response_extract {path!r} is not valid JSONPath: {exc}") from exc
    try:
        expr.find({})
    except NotImplementedError:  # jsonpath-ng parses `a & b` (intersection) but cannot run it
        raise TemplateError(
            f"response_extract {path!r} uses a JSONPath operator this gateway cannot evaluate "
            "(such as &); use a plain path like $.choices[0].message.content"
        ) from None
    return Extractor(path, None, expr)


def _parse_simple(text: str, *, leading_dot: bool) -> tuple[Step, ...] | None:
    steps: list[Step] = []
    pos = 0
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None:
            return None
        if match.group("name") is not None:
            name = match.group("name").strip()
            needs_dot = bool(steps) or leading_dot
            if needs_dot != bool(match.group("dot")) or not name or name in ("*", ".."):
                return None
            steps.append(name)
        elif match.group("quoted") is not None:
            steps.append(match.group("quoted"))
        else:
            index = match.group("index")
            steps.append(int(index) if index else 0)
        pos = match.end()
    return tuple(steps)


def _walk(doc: Any, steps: tuple[Step, ...], path: str) -> Any:
    value = doc
    for depth, step in enumerate(steps):
        if isinstance(step, int):
            if not isinstance(value, list):
                raise ExtractError(_missing(path, steps, depth, f"is {_kind(value)}, not a list"))
            if not -len(value) <= step < len(value):
                raise ExtractError(
                    _missing(path, steps, depth, f"is a list of {len(value)}, no index {step}")
                )
            value = value[step]
        else:
            if not isinstance(value, dict):
                raise ExtractError(
                    _missing(path, steps, depth, f"is {_kind(value)}, not an object")
                )
            if step not in value:
                keys = ", ".join(list(value)[:8])
                raise ExtractError(
                    _missing(path, steps, depth, f"has no key {step!r} (keys: {keys})")
                )
            value = value[step]
    return value


def _missing(path: str, steps: tuple[Step, ...], depth: int, why: str) -> str:
    where = "the response" if depth == 0 else _render(steps[:depth])
    return f"worker response has no value at {path!r}: {where} {why}"


def _render(steps: tuple[Step, ...]) -> str:
    out = "$"
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )
