"""Compile a worker's request template once; render it per request by joining bytes.

The body is serialised once at compile time with a unique marker where each placeholder
stands, then cut at the markers. Rendering a request is a join of the fixed byte segments
with the JSON encoding of each value, so no template walk, no string scan and no second
substitution happens per request (a prompt that contains `{MODEL_NAME}` stays literal).
"""

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
from yarl import URL

from templates import placeholders
from templates.errors import TemplateError

Values = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Slot:
    name: str
    typed: bool  # the whole JSON string was this placeholder: insert the value's own JSON type
    in_path: bool = False  # in a URL's path, where a value must not make a `.` or `..` segment


@dataclass(frozen=True, slots=True)
class TextTemplate:
    """A string (URL or header value) with placeholders substituted as text."""

    parts: tuple[str | _Slot, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parts if isinstance(p, _Slot))

    def render(self, values: Values, *, url_encode: bool = False) -> str:
        """Fill in `values`; with `url_encode`, each is percent-encoded to sit in a URL."""
        out: list[str] = []
        dotted = False
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            text = _as_text(values.get(part.name))
            if url_encode:
                text = quote(text, safe="")
                if part.in_path and not text.strip("."):
                    dotted = True  # all dots, or empty: its path segment may be `.` or `..`
            out.append(text)
        return _undot(self.parts, out) if dotted else "".join(out)


def compile_text(text: str) -> TextTemplate:
    """Split `text` at its placeholders."""
    parts: list[str | _Slot] = []
    pos = 0
    for start, end, name in placeholders.find(text):
        if start > pos:
            parts.append(text[pos:start])
        parts.append(_Slot(name, typed=False))
        pos = end
    if pos < len(text):
        parts.append(text[pos:])
    return TextTemplate(tuple(parts))


def url_value(text: str) -> str:
    """Percent-encode `text` to stand alone in a URL; a value of dots becomes `%2E`s."""
    quoted = quote(text, safe="")
    return "%2E" * len(quoted) if quoted and not quoted.strip(".") else quoted


def bake_url(url: str, fixed: Mapping[str, str]) -> str:
    """Return the URL template `url` with the placeholders named in `fixed` filled in for good."""
    out: list[str] = []
    for part in compile_text(url).parts:
        if isinstance(part, str):
            out.append(part)
        elif part.name in fixed:
            out.append(url_value(fixed[part.name]))
        else:
            out.append("{" + part.name + "}")
    return "".join(out)


def _undot(parts: tuple[str | _Slot, ...], out: list[str]) -> str:
    # A path segment made only of dots that a value helped make is sent as `%2E`s: `.` and
    # `..` would walk the worker's path (a prompt of ".." in /api/{USER_PROMPT}/x). Values
    # are percent-encoded, so every `/`, `?` and `#` in the URL is the template's own.
    url = "".join(out)
    pieces: list[str] = []
    done = pos = 0
    for part, text in zip(parts, out, strict=True):
        start, pos = pos, pos + len(text)
        if not isinstance(part, _Slot) or not part.in_path:
            continue
        seg_start = url.rfind("/", 0, start) + 1
        if seg_start < done:
            continue  # the segment of a slot just handled
        ends = [i for i in (url.find(mark, pos) for mark in "/?#") if i >= 0]
        seg_end = min(ends, default=len(url))
        segment = url[seg_start:seg_end]
        if segment and not segment.strip("."):
            pieces.append(url[done:seg_start])
            pieces.append("%2E" * len(segment))
            done = seg_end
    pieces.append(url[done:])
    return "".join(pieces)


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """A JSON body as fixed byte segments with slots between them.

    An object member whose whole value is a placeholder is left out when that value is None
    (a client that gave no `max_tokens` sends no `max_tokens`, rather than `null`). That case
    takes the slower path of rebuilding the body from `source`; the usual one is a byte join.
    """

    segments: tuple[bytes | _Slot, ...]
    source: Any
    optional: frozenset[str]  # names that stand alone as the value of an object member

    @property
    def names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.segments if isinstance(s, _Slot))

    def render(self, values: Values) -> bytes:
        for name in self.optional:
            if values.get(name) is None:
                return orjson.dumps(_substitute(self.source, values))
        out: list[bytes] = []
        for seg in self.segments:
            if isinstance(seg, bytes):
                out.append(seg)
            elif seg.typed:
                out.append(orjson.dumps(values.get(seg.name)))
            else:
                # The JSON encoding of the text without its quotes: it sits inside a string.
                out.append(orjson.dumps(_as_text(values.get(seg.name)))[1:-1])
        return b"".join(out)


def compile_body(body: Any) -> BodyTemplate:
    """Compile a JSON-compatible body (dicts and lists at any depth) into segments."""
    try:
        fixed = orjson.dumps(body)
    except TypeError as exc:
        raise TemplateError(f"body is not JSON-serialisable: {exc}") from exc
    nonce = secrets.token_hex(8)
    while nonce.encode() in fixed:  # pragma: no cover - 64 random bits
        nonce = secrets.token_hex(8)
    slots: list[_Slot] = []
    optional: set[str] = set()

    def marker(index: int) -> str:
        return f"@@{nonce}:{index}@@"

    def mark(value: Any) -> Any:
        if isinstance(value, dict):
            for item in value.values():
                whole = _whole(item)
                if whole is not None:
                    optional.add(whole)
            return {key: mark(item) for key, item in value.items()}
        if isinstance(value, list):
            return [mark(item) for item in value]
        if not isinstance(value, str):
            return value
        found = placeholders.find(value)
        if not found:
            return value
        if len(found) == 1 and found[0][0] == 0 and found[0][1] == len(value):
            slots.append(_Slot(found[0][2], typed=True))
            return marker(len(slots) - 1)
        pieces: list[str] = []
        pos = 0
        for start, end, name in found:
            pieces.append(value[pos:start])
            slots.append(_Slot(name, typed=False))
            pieces.append(marker(len(slots) - 1))
            pos = end
        pieces.append(value[pos:])
        return "".join(pieces)

    marked = orjson.dumps(mark(body))
    # A quoted marker is a whole JSON string (a typed slot) only when its opening quote is not
    # an escaped one: `"a \"{USER_PROMPT}"` holds the marker inside a longer string.
    pattern = re.compile(
        rb'(?<!\\)"@@' + nonce.encode() + rb":(\d+)@@\"|@@" + nonce.encode() + rb":(\d+)@@"
    )
    segments: list[bytes | _Slot] = []
    pos = 0
    for match in pattern.finditer(marked):
        if match.start() > pos:
            segments.append(marked[pos : match.start()])
        segments.append(slots[int(match.group(1) or match.group(2))])
        pos = match.end()
    if pos < len(marked):
        segments.append(marked[pos:])
    return BodyTemplate(tuple(segments), body, frozenset(optional))


def _whole(value: Any) -> str | None:
    """Return the placeholder name when `value` is a string made of exactly one placeholder."""
    if not isinstance(value, str):
        return None
    found = placeholders.find(value)
    if len(found) == 1 and found[0][0] == 0 and found[0][1] == len(value):
        return found[0][2]
    return None


def _substitute(value: Any, values: Values) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            whole = _whole(item)
            if whole is not None and values.get(whole) is None:
                continue
            out[key] = _substitute(item, values)
        return out
    if isinstance(value, list):
        return [_substitute(item, values) for item in value]
    if not isinstance(value, str):
        return value
    whole = _whole(value)
    if whole is not None:
        return values.get(whole)
    found = placeholders.find(value)
    if not found:
        return value
    pieces: list[str] = []
    pos = 0
    for start, end, name in found:
        pieces.append(value[pos:start])
        pieces.append(_as_text(values.get(name)))
        pos = end
    pieces.append(value[pos:])
    return "".join(pieces)


@dataclass(frozen=True, slots=True)
class RenderedRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """Everything needed to turn request values into the worker's HTTP request."""

    method: str
    url: TextTemplate
    headers: tuple[tuple[str, TextTemplate], ...]
    body: BodyTemplate | None
    # The URL and the headers when no placeholder is left in them (the usual worker: its model
    # name is baked into the URL at registration, its headers are constants): made once here,
    # not on every request. None when a request value goes in.
    fixed_url: str | None = field(init=False, compare=False, repr=False)
    fixed_headers: dict[str, str] | None = field(init=False, compare=False, repr=False)
    # Every placeholder the request uses, so that values it does not use need not be made.
    names: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = self.url.names.union(*(tpl.names for _, tpl in self.headers))
        if self.body is not None:
            names |= self.body.names
        object.__setattr__(self, "names", names)
        url = None if self.url.names else self.url.render({}, url_encode=True)
        object.__setattr__(self, "fixed_url", url)
        headers = None
        if not any(tpl.names for _, tpl in self.headers):
            headers = {name: _header_safe(tpl.render({})) for name, tpl in self.headers}
        object.__setattr__(self, "fixed_headers", headers)

    def render(self, values: Values) -> RenderedRequest:
        """Fill in `values`; raise TemplateError for a value JSON cannot carry (nested too deep)."""
        try:
            headers = self._headers(values)
            body = self.body.render(values) if self.body is not None else None
            url = self.fixed_url
            if url is None:
                url = self.url.render(values, url_encode=True)
        except orjson.JSONEncodeError as exc:
            raise TemplateError(f"a request value cannot be sent as JSON: {exc}") from exc
        return RenderedRequest(self.method, url, headers, body)

    def head(self, values: Values, body: bytes) -> RenderedRequest:
        """Fill in the URL and headers only, with `body` (a codec's, or the client's own)."""
        url = self.fixed_url
        if url is None:
            url = self.url.render(values, url_encode=True)
        return RenderedRequest(self.method, url, self._headers(values), body)

    def _headers(self, values: Values) -> dict[str, str]:
        # A new dict every time: the caller adds the request's own (X-Request-ID, traceparent).
        if self.fixed_headers is not None:
            return self.fixed_headers.copy()
        return {name: _header_safe(tpl.render(values)) for name, tpl in self.headers}


def compile_request(
    method: str, url: str, headers: Mapping[str, str], body: Any | None
) -> RequestPlan:
    """Check and compile a worker's request template; raise TemplateError naming what is wrong."""
    method = method.upper()
    if method not in ("POST", "GET"):
        raise TemplateError(f"req_type must be POST or GET, not {method!r}")
    url_tpl = compile_text(url)
    placeholders.check_known(set(url_tpl.names), "req_url_template")
    _check_url(url_tpl)
    url_tpl = _mark_path(_encoded(url_tpl))
    header_tpls: list[tuple[str, TextTemplate]] = []
    for name, value in headers.items():
        tpl = compile_text(value)
        placeholders.check_known(set(tpl.names), f"header {name!r}")
        header_tpls.append((name, tpl))
    if not any(name.lower() == "content-type" for name, _ in header_tpls) and method == "POST":
        header_tpls.append(("Content-Type", TextTemplate(("application/json",))))
    body_tpl: BodyTemplate | None = None
    if method == "POST":
        if body is None:
            raise TemplateError("a POST worker needs a body containing {USER_PROMPT}")
        body_tpl = compile_body(body)
        placeholders.check_known(set(body_tpl.names), "body")
        if not body_tpl.names & {placeholders.USER_PROMPT, placeholders.MESSAGES}:
            raise TemplateError(
                "body has no {USER_PROMPT} (or {MESSAGES}) placeholder: put it where the worker "
                'expects the prompt, e.g. {"input": "{USER_PROMPT}"}'
            )
    else:
        if body:
            raise TemplateError(
                "req_type GET sends no body: put {USER_PROMPT} in req_url_template instead"
            )
        where = set(url_tpl.names).union(*(tpl.names for _, tpl in header_tpls))
        if placeholders.USER_PROMPT not in where:
            raise TemplateError(
                "a GET worker needs {USER_PROMPT} in req_url_template, "
                "e.g. http://host/generate?q={USER_PROMPT}"
            )
    return RequestPlan(method, url_tpl, tuple(header_tpls), body_tpl)


def _check_url(tpl: TextTemplate) -> None:
    # Where the gateway connects is the operator's choice, never a request's: a request value
    # in the scheme, host or port would let callers aim the gateway anywhere. Only
    # {MODEL_NAME}, fixed at registration, may appear there.
    text = ""
    for part in tpl.parts:
        if isinstance(part, str):
            text += part
            continue
        _, sep, rest = text.partition("://")
        in_authority = not sep or not any(mark in rest for mark in "/?#")
        if in_authority and part.name != placeholders.MODEL_NAME:
            raise TemplateError(
                "req_url_template: the scheme, host and port must not be filled in from the "
                f"request (found {{{part.name}}} there); only {{MODEL_NAME}} may appear in them, "
                "request values belong in the path or the query"
            )
        text += "x"
    sample = tpl.render({name: "x" for name in tpl.names}, url_encode=True)
    try:
        parsed = URL(sample)
    except ValueError as exc:
        raise TemplateError(f"req_url_template is not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise TemplateError(
            "req_url_template must be an absolute http:// or https:// URL with a host, "
            f"got {tpl.render({}, url_encode=False)!r}"
        )


# A URL with nothing left to percent-encode: what an HTTP client can send as it stands.
_ENCODED = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")


def _encoded(tpl: TextTemplate) -> TextTemplate:
    """Percent-encode (and IDNA-encode the host of) the template's own text, once.

    Rendered URLs are then fully encoded, so the HTTP client sends them as they stand: one
    it had to encode itself would also be normalised, turning a value's `%2E%2E` back into
    `..` and walking up the worker's path.
    """
    if all(isinstance(part, _Slot) or _ENCODED.fullmatch(part) for part in tpl.parts):
        return tpl
    nonce = secrets.token_hex(8)
    slots: list[_Slot] = []
    sample = ""
    for part in tpl.parts:
        if isinstance(part, str):
            sample += part
        else:
            sample += f"z{nonce}{len(slots)}z"  # lowercase letters and digits: yarl keeps them
            slots.append(part)
    try:
        encoded = str(URL(sample))
    except ValueError as exc:
        raise TemplateError(f"req_url_template is not a valid URL: {exc}") from exc
    parts: list[str | _Slot] = []
    pos = 0
    found = []
    for match in re.finditer(f"z{nonce}(\\d+)z", encoded):
        if match.start() > pos:
            parts.append(encoded[pos : match.start()])
        found.append(int(match.group(1)))
        parts.append(slots[found[-1]])
        pos = match.end()
    if pos < len(encoded):
        parts.append(encoded[pos:])
    if found != list(range(len(slots))):
        raise TemplateError(
            "req_url_template: a placeholder does not survive encoding the URL (is it in a "
            "non-ASCII host, or in a path segment that a `..` removes?); write the URL "
            "percent-encoded, with its placeholders where they stay"
        )
    return TextTemplate(tuple(parts))


def _mark_path(tpl: TextTemplate) -> TextTemplate:
    """Mark the slots that sit in the URL's path (after the authority, before `?` or `#`)."""
    parts: list[str | _Slot] = []
    text = ""
    for part in tpl.parts:
        if isinstance(part, _Slot):
            _, sep, rest = text.partition("://")
            in_path = bool(sep) and "/" in rest and "?" not in rest and "#" not in rest
            parts.append(_Slot(part.name, typed=False, in_path=in_path))
            text += "x"
        else:
            parts.append(part)
            text += part
    return TextTemplate(tuple(parts))


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


# Control characters HTTP forbids in a header value (tab is allowed).
_HEADER_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_safe(value: str) -> str:
    # A prompt placed in a header must not be able to end the header and start another, nor
    # hold a character the HTTP client refuses to send.
    return _HEADER_UNSAFE.sub(" ", value)
