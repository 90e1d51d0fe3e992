"""Compile a `response_extract` path once; pull the answer text out of a worker's response.

Two spellings are accepted. The seed's short form `a.b[].c` (`[]` is the first element,
`[n]` any index) and a JSONPath starting with `$`. Paths made only of keys and indexes, in
either spelling, compile to a tuple of steps walked directly; anything richer (filters,
wildcards, slices) goes through jsonpath-ng. An empty path means the raw response text.

A plain path costs a few dict and list lookups, whatever the size of the response. A
jsonpath-ng expression can cost far more: `$..*` visits every value, `$..a..b` every value
below every `a`, and jsonpath-ng builds an object per value visited (a 2.7 MB answer took
seconds). Such an extractor says so (`costly`), so the gateway can run it off the event loop
under a deadline when the document is large. Its work is bounded here as well, because a
thread cannot be stopped: each node of the compiled expression charges a per-evaluation
budget (`max_steps`) each time it is evaluated, and a node that iterates over a list or
object (wildcards, slices, filters, sorts, and the right side of a `..`, run on each value the
walk visits) charges that width up front, before it builds anything. Past the budget the
evaluation stops with ExtractError. The work is so bounded by about `max_steps` small steps
whatever the document or path, while a selective path on a large answer
(`$.choices[?(@.index == 0)].message.content`) spends little. Counting the document's values
before evaluating was the other choice: it refuses such selective paths on large answers,
and still does not bound nested `..` (n values times their depth) or `$` inside a filter.

Every failure on what a worker sent raises ExtractError, never another exception; the text a
worker sent goes in the error's `quote`, never in its `message`.
"""

import contextvars
import copy
import functools
import itertools
import re
import warnings
from dataclasses import dataclass
from typing import Any

import orjson
from jsonpath_ng import DatumInContext, Descendants, JSONPath, Slice, Wildcard
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext.filter import Filter
from jsonpath_ng.ext.iterable import Keys, SortedThis
from jsonpath_ng.ext.parser import parse as jsonpath_parse

from templates.errors import QUOTE_MAX_CHARS, ExtractError, TemplateError

Step = str | int

# Well under a second of jsonpath-ng's work (a step costs 1 to 8 microseconds on a laptop's
# core); a normal answer spends a few hundred.
MAX_STEPS = 100_000

_STEP = re.compile(
    r"""\[(?P<index>-?\d*)\]                 # [] or [3]
      | \[(?P<q>['"])(?P<quoted>.*?)(?P=q)\]  # ['key with.dots']
      | (?P<dot>\.)?(?P<name>[^.\[\]'"]+)     # key or .key
    """,
    re.VERBOSE,
)


class _Absent(ExtractError):
    """The path leads nowhere in this response (a stream's last chunk often has no text)."""


@dataclass(frozen=True, slots=True)
class Extractor:
    """A compiled extract path; `extract(raw)` returns the answer text."""

    path: str
    steps: tuple[Step, ...] | None  # None: raw text, or a jsonpath-ng expression below
    expr: Any = None
    max_steps: int = MAX_STEPS  # the work budget of one jsonpath-ng evaluation

    @property
    def is_raw(self) -> bool:
        return self.steps is None and self.expr is None

    @property
    def costly(self) -> bool:
        """Whether the path is a jsonpath-ng expression, whose work grows with the document."""
        return self.expr is not None

    def extract(self, raw: bytes) -> str:
        """Return the answer text in a worker's raw response, or raise ExtractError."""
        if self.is_raw:
            return raw.decode("utf-8", errors="replace")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ExtractError(
                f"worker answered with something that is not JSON ({exc})",
                raw[:QUOTE_MAX_CHARS].decode("utf-8", errors="replace"),
            ) from exc
        return self.extract_value(doc)

    def extract_value(self, doc: Any) -> str:
        """Return the text at the path in a parsed document, or raise ExtractError."""
        value = self.find(doc)
        if isinstance(value, str):
            return value
        if value is None:
            raise _Absent(f"worker response has null at {self.path!r}")
        return _text(value, self.path)

    def find(self, doc: Any) -> Any:
        """Return the JSON value at the path (any type), or raise ExtractError."""
        if self.steps is not None:
            return _walk(doc, self.steps, self.path)
        if self.expr is None:
            return doc
        token = _BUDGET.set(_Budget(self.max_steps))
        try:
            matches = self.expr.find(doc)
        except _OverBudget:
            raise ExtractError(
                f"the JSONPath {self.path!r} needs more work than allowed "
                f"({self.max_steps} steps) on this worker response, which is too large or too "
                "deep for it; use a plain path of keys and indexes, such as "
                "$.choices[0].message.content"
            ) from None
        except Exception as exc:
            # jsonpath-ng's operators run on whatever the worker sent, and fail as they
            # happen to (TypeError, AttributeError, RecursionError on deep data, ...): each
            # of them is a response this path cannot be evaluated on.
            raise ExtractError(
                f"cannot evaluate {self.path!r} on the worker response ({type(exc).__name__})",
                str(exc),
                "the JSONPath library said",
            ) from exc
        finally:
            _BUDGET.reset(token)
        if not isinstance(matches, list):  # some jsonpath-ng nodes answer a bare match
            matches = [matches]
        if not matches:
            raise _Absent(f"worker response has no value at {self.path!r}")
        first = matches[0]
        return first.value if isinstance(first, DatumInContext) else first

    def text_or_none(self, doc: Any) -> str | None:
        """Return the text at the path, or None when it is absent (as in a stream's last chunk).

        A value that is there but cannot be read (an evaluation that fails or is too costly,
        a value nested too deep to turn into text) raises ExtractError.
        """
        try:
            value = self.find(doc)
        except _Absent:
            return None
        if value is None or isinstance(value, str):
            return value
        return _text(value, self.path)


def compile_extract(path: str, *, max_steps: int = MAX_STEPS) -> Extractor:
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
    return Extractor(path, None, _counted(expr), max_steps)


def _text(value: Any, path: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:  # nested past orjson's 254 levels, mostly
        raise ExtractError(
            f"the value at {path!r} in the worker response cannot be turned into JSON text "
            f"({exc}); point response_extract at a value inside it"
        ) from exc


# --- the work budget of jsonpath-ng evaluations ---------------------------------------------


class _Budget:
    __slots__ = ("left",)

    def __init__(self, steps: int) -> None:
        self.left = steps


class _OverBudget(Exception):
    """The evaluation spent its budget (raised again by every later step, should one be caught)."""


# The budget of the evaluation running in this thread or task. An expression is compiled once
# and shared by every request, so its nodes find their budget here rather than on themselves;
# unset (at compile time), nothing is counted.
_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "extract_budget", default=None
)

# Nodes that iterate over the list or object they are given: their width is charged up front,
# so a single wide list cannot be a large unbudgeted step.
_ITERATING = (Wildcard, Slice, Filter, SortedThis, Keys)


@functools.cache
def _counting_class(cls: Any) -> type:
    base_find = cls.find

    def find(self: Any, datum: Any) -> Any:
        budget = _BUDGET.get()
        if budget is None:
            return base_find(self, datum)
        cost = 1
        if self.__dict__.get("_budget_width"):
            value = datum.value if isinstance(datum, DatumInContext) else datum
            if isinstance(value, list | dict):
                cost += len(value)
        budget.left -= cost
        if budget.left < 0:
            raise _OverBudget
        return base_find(self, datum)

    # A subclass, so jsonpath-ng's own isinstance checks on its nodes still hold.
    return type(cls.__name__, (cls,), {"find": find, "__module__": cls.__module__})


def _counted(expr: JSONPath) -> JSONPath:
    """Return a copy of `expr` whose every node charges the running evaluation's budget."""
    root = copy.deepcopy(expr)
    stack: list[tuple[Any, bool]] = [(root, False)]
    seen: set[int] = set()
    while stack:
        node, wide = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        node.__class__ = _counting_class(node.__class__)
        # The right side of `..` is evaluated on every value the walk visits, just before the
        # walk builds that value's children.
        node._budget_width = wide or isinstance(node, _ITERATING)
        for name, attr in vars(node).items():
            right = isinstance(node, Descendants) and name == "right"
            stack.extend((child, right) for child in _paths_in(attr))
    return root


def _paths_in(attr: Any) -> list[JSONPath]:
    # Sub-expressions sit in attributes, alone or in lists of tuples (sorts: (field, reverse)).
    if isinstance(attr, JSONPath):
        return [attr]
    if isinstance(attr, list | tuple):
        return [path for item in attr for path in _paths_in(item)]
    return []


# --- plain paths ------------------------------------------------------------------------------


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
                raise _Absent(_missing(path, steps, depth, f"is {_kind(value)}, not a list"))
            if not -len(value) <= step < len(value):
                raise _Absent(
                    _missing(path, steps, depth, f"is a list of {len(value)}, no index {step}")
                )
            value = value[step]
        else:
            if not isinstance(value, dict):
                raise _Absent(_missing(path, steps, depth, f"is {_kind(value)}, not an object"))
            if step not in value:
                if not value:
                    raise _Absent(_missing(path, steps, depth, f"is empty, no key {step!r}"))
                # The keys are the worker's text: a quote, kept apart from the message.
                raise _Absent(
                    _missing(path, steps, depth, f"has no key {step!r}"),
                    ", ".join(str(key) for key in itertools.islice(value, 8)),
                    "its keys are",
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
