"""mtls.requesthead: when a request may go to a pool thread, against gunicorn's own parser."""

from __future__ import annotations

import io
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http.errors import NoMoreData
from gunicorn.http.parser import RequestParser
from hypothesis import given
from hypothesis import strategies as st

from mtls.requesthead import (
    BUFFERED_BODY,
    RequestBuffer,
    head_complete,
    head_limit,
    ready_for_thread,
)

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "ready"),
    [
        (b"", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\n", False),
        (GET, True),
        (b"\r\n" + GET, True),  # RFC 9112 2.2: one empty line before the request line
        (b"\r\n", False),  # the tolerated empty line: the request line is still to come
        (b"\r\n\r\n", True),  # then an empty request line: refused without reading more
        (b"GET / HTTP/1.1\nHost: a\n\n", False),  # bare LF is not a line end for gunicorn
        (GET + b"GET / HTTP/1.1\r\n", True),  # pipelined: the first request is whole
        (b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", False),
        (b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd", True),
        (b"POST / HTTP/1.1\r\ncontent-length:4\r\n\r\nabcd", True),
        (b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\n\r\n", True),  # not Content-Length
        (b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", True),  # 400
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", True),  # 400
        (f"POST / HTTP/1.1\r\nContent-Length: {BUFFERED_BODY + 1}\r\n\r\n".encode(), True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n", True),
        # Waits for "100 Continue" before its body: must not wait for the body here.
        (b"POST / HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", True),
    ],
)
def test_ready_for_thread(data: bytes, ready: bool) -> None:
    assert ready_for_thread(data) is ready


def test_head_limit_covers_what_gunicorn_accepts() -> None:
    limit = head_limit(Config())
    assert limit >= 4094 + 100 * 8190
    assert limit <= 1024 * 1024 + BUFFERED_BODY


class _Source:
    """A socket-like source whose bytes end where the test says (recv then returns b"")."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.reads_past_end = 0

    def recv(self, n: int) -> bytes:
        chunk = self._data.read(min(n, 7))
        if not chunk:
            self.reads_past_end += 1
        return chunk


def _parser_needs_more(data: bytes) -> bool:
    """Whether gunicorn's parser, given exactly ``data``, would wait for more to parse the head."""
    source = _Source(data)
    parser: Any = RequestParser(Config(), source, ("127.0.0.1", 1))
    try:
        next(parser)
    except NoMoreData:
        return True
    except StopIteration:
        return source.reads_past_end > 0
    except Exception:  # any refusal: did the parser read past the end first?
        return source.reads_past_end > 0
    return False


heads = st.lists(
    st.sampled_from([b"GET / HTTP/1.1", b"\r\n", b"Host: a", b"X: y", b"\n", b"\r", b" "]),
    max_size=8,
).map(b"".join)


@given(heads)
def test_a_complete_head_never_makes_gunicorn_wait_for_more(data: bytes) -> None:
    """The property that matters: a head we call complete is parsed from the buffer alone."""
    if head_complete(data):
        assert not _parser_needs_more(data), data


@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_the_incremental_buffer_agrees_with_the_whole_judgement(
    data: bytes, cuts: list[int]
) -> None:
    """Fed in any pieces, RequestBuffer says what ready_for_thread says of the whole."""
    pieces, rest = [], GET + data
    for cut in cuts:
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    buffer = RequestBuffer()
    seen = b""
    for piece in pieces:
        buffer.feed(piece)
        seen += piece
        assert buffer.ready == ready_for_thread(seen)


def test_a_head_dripped_byte_by_byte_costs_linear_work() -> None:
    """The hostile-review finding: 200,000 one-byte pieces used to be quadratic."""
    buffer = RequestBuffer()
    buffer.feed(b"GET / HTTP/1.1\r\nX-A: ")
    for _ in range(200_000):
        buffer.feed(b"a")
    assert not buffer.ready
    buffer.feed(b"\r\n\r\n")
    assert buffer.ready
