"""Stream decoders: the same payloads however a stream is cut, and a bound on every line."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from templates import ExtractError, StreamFormat, StreamLineTooLong, decoder

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Field values: any bytes but the line breaks that end them.
VALUE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
SSE_LINE = st.one_of(
    VALUE.map(lambda v: b"data: " + v),
    VALUE.map(lambda v: b"data:" + v),
    VALUE.map(lambda v: b":" + v),
    st.sampled_from([b"event: message", b"id: 7", b"retry: 10", b"data", b"", b"", b""]),
)
SSE_STREAM = st.tuples(
    st.lists(st.tuples(SSE_LINE, st.sampled_from([b"\n", b"\r\n"])), max_size=30),
    st.sampled_from([b"", b"\n", b"data: tail"]),  # how the stream ends: cut short, or not
).map(lambda t: b"".join(line + end for line, end in t[0]) + t[1])
NDJSON_STREAM = st.lists(
    st.tuples(
        st.one_of(VALUE, st.sampled_from([b"", b"  ", b'{"a": 1}', b"\t[1, 2]\r"])),
        st.just(b"\n"),
    ),
    max_size=30,
).map(lambda lines: b"".join(line + end for line, end in lines))


def run(fmt: StreamFormat, chunks: list[bytes], max_line_bytes: int) -> tuple[list[bytes], bool]:
    """Feed `chunks`, then close: the payloads, and whether a line was too long."""
    events = decoder(fmt, max_line_bytes=max_line_bytes)
    out: list[bytes] = []
    try:
        for chunk in chunks:
            out.extend(events.feed(chunk))
        out.extend(events.close())
    except StreamLineTooLong:
        return out, True
    return out, False


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(stream), *(min(p, len(stream)) for p in points)})
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


@FAST
@given(
    fmt_stream=st.one_of(
        st.tuples(st.just("sse"), SSE_STREAM), st.tuples(st.just("ndjson"), NDJSON_STREAM)
    ),
    data=st.data(),
)
def test_any_cutting_of_a_stream_gives_the_payloads_of_the_whole(
    fmt_stream: tuple[StreamFormat, bytes], data: st.DataObject
) -> None:
    fmt, stream = fmt_stream
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    limit = data.draw(st.sampled_from([1 << 20, 8, 20, 45]))
    whole, whole_too_long = run(fmt, [stream], limit)
    pieces, pieces_too_long = run(fmt, cut(stream, points), limit)
    one_by_one, _ = run(fmt, [stream[i : i + 1] for i in range(len(stream))], limit)
    assert pieces_too_long == whole_too_long
    if whole_too_long:
        # A stream refused part way gave (some of) the payloads before the long line.
        unbounded, _ = run(fmt, [stream], 1 << 20)
        assert pieces == unbounded[: len(pieces)]
    else:
        assert pieces == whole == one_by_one


def test_sse_payloads_are_the_data_of_each_event() -> None:
    stream = b": hi\nevent: x\ndata: a\ndata:b\n\ndata: [DONE]\r\n\r\ndata: cut"
    assert run("sse", [stream], 1 << 20) == ([b"a\nb", b"[DONE]", b"cut"], False)


def test_ndjson_payloads_are_the_non_empty_lines() -> None:
    stream = b'{"a":1}\n\n  \r\n{"b":2}\r\n{"c":'
    assert run("ndjson", [stream], 1 << 20) == ([b'{"a":1}', b'{"b":2}', b'{"c":'], False)


@pytest.mark.parametrize("fmt", ["sse", "ndjson"])
def test_an_unfinished_line_past_the_limit_is_refused_before_its_newline(
    fmt: StreamFormat,
) -> None:
    events = decoder(fmt, max_line_bytes=1000)
    assert events.feed(b"data: " + b"x" * 994) == []  # 1000 bytes: at the limit, still held
    with pytest.raises(StreamLineTooLong, match="longer than 1000 bytes") as caught:
        events.feed(b"x")
    assert isinstance(caught.value, ExtractError)  # the gateway's worker-answered-badly error


@pytest.mark.parametrize("fmt", ["sse", "ndjson"])
def test_a_long_line_in_one_chunk_is_refused_too(fmt: StreamFormat) -> None:
    events = decoder(fmt, max_line_bytes=1000)
    assert events.feed(b"data: ok\n\n" + b"y" * 1000 + b"\n") != []  # at the limit: fine
    with pytest.raises(StreamLineTooLong):
        events.feed(b"data: " + b"y" * 995 + b"\n\n")


def test_an_sse_event_whose_data_lines_add_up_past_the_limit_is_refused() -> None:
    events = decoder("sse", max_line_bytes=1000)
    with pytest.raises(StreamLineTooLong, match="more than 1000 bytes of data"):
        for _ in range(200):
            events.feed(b"data: " + b"z" * 10 + b"\n")  # never a blank line to end the event


@pytest.mark.timeout(30)  # the quadratic decoder needed minutes for this (a hang, not a bound)
@pytest.mark.parametrize("fmt", ["sse", "ndjson"])
def test_a_long_line_fed_in_small_chunks_is_decoded_in_linear_time(fmt: StreamFormat) -> None:
    size = 12 * 1024 * 1024
    events = decoder(fmt, max_line_bytes=size + 100)
    line = b"x" * 512
    assert events.feed(b"data: ") == []
    for _ in range(size // len(line)):
        assert events.feed(line) == []
    payloads = events.feed(b"\n\n")
    assert [len(p) for p in payloads] == [size] if fmt == "sse" else [size + 6]


def test_the_default_limit_is_one_mebibyte() -> None:
    events = decoder("ndjson")
    events.feed(b"a" * (1024 * 1024))
    with pytest.raises(StreamLineTooLong):
        events.feed(b"a")
