"""When an HTTP/1.1 request is ready for a pool thread, judged on bytes alone (pure).

The worker reads request heads, and bodies of up to ``BUFFERED_BODY`` bytes,
on its event loop and hands a connection to a pool thread only once they are
whole, so a peer that sends half a request and stops holds no thread. Larger
and chunked bodies are read by the thread, each read under MTLS_IO_TIMEOUT.
The rule must match gunicorn's parser exactly:
  - the head ends at the first empty line, CRLF only (RFC 9112 section 2.1;
    gunicorn splits on b"\\r\\n" and never accepts a bare LF);
  - one empty line before the request line is skipped (RFC 9112 section 2.2,
    "at least one"; gunicorn skips exactly one), so b"\\r\\n\\r\\n" alone is
    NOT a head: it would send a thread to wait for the request line.
Anything the parser would refuse is complete as soon as it is over the size
limit: gunicorn then answers 400/431 from the buffer without reading more.
"""

from __future__ import annotations

import re
from typing import Any

# Bodies up to this size (by Content-Length) are buffered before a thread sees them.
BUFFERED_BODY = 64 * 1024
_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]{1,19})[ \t]*(?=\r\n)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:", re.I)
# RFC 9110 10.1.1: such a client sends its body only after "100 Continue"
# (gunicorn sends it when the app reads the body): waiting for it here would
# stall the client until its own expect timeout, or ours.
_EXPECT = re.compile(rb"\r\nexpect[ \t]*:", re.I)
# gunicorn's own ceilings (gunicorn.http.message): MAX_REQUEST_LINE and the
# buffer it allows for headers, used where a limit is 0 ("unlimited").
_MAX_REQUEST_LINE = 8190
_MAX_HEADERS = 32768
_DEFAULT_FIELD_SIZE = 8190
_CEILING = 1024 * 1024


def head_complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole request head (and maybe more: body, pipelined requests)."""
    return _head_end(data) is not None


def ready_for_thread(data: bytes) -> bool:
    """Whether a pool thread can serve ``data`` without waiting on the peer for small things.

    True once the head is whole and, for a Content-Length body of at most
    BUFFERED_BODY bytes, the body too. A larger or chunked body, a client
    that expects "100 Continue", or a head the parser will refuse (two or
    malformed Content-Lengths), is ready as soon as the head is: the thread
    reads the rest, or answers 400.
    """
    buffer = RequestBuffer(data)
    return buffer.ready


# A head in more pieces than this is refused: a legitimate client sends one
# in a few TLS records, and a peer dripping one byte per record makes every
# piece cost a syscall and a callback on the event loop.
MAX_PIECES = 1024


class RequestBuffer:
    """One request's bytes as they arrive, judged incrementally: linear in its size.

    ``ready_for_thread`` over the whole buffer after every piece would cost
    O(n) each time, O(n^2) for a head dripped in tiny records (a hostile
    peer froze a worker's event loop that way). Here the head's end is
    searched only in the bytes that can complete it, and the rest of the
    judgement is made once, when the head is whole.
    """

    def __init__(self, start: bytes = b"") -> None:
        self.data = bytearray()
        self.pieces = 0
        self._scanned = 0
        self._ready_at: int | None = None  # total length at which it is ready
        self.feed(start)
        self.pieces = 0

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        self.pieces += 1
        if self._ready_at is None:
            # Only the last 3 bytes before this chunk can begin the CRLF CRLF.
            end = _head_end(self.data, self._scanned)
            self._scanned = max(0, len(self.data) - 3)
            if end is not None:
                self._ready_at = end + _body_to_wait_for(bytes(self.data[:end]))

    @property
    def ready(self) -> bool:
        return self._ready_at is not None and len(self.data) >= self._ready_at

    def take(self) -> bytes:
        data = bytes(self.data)
        self.data = bytearray()
        return data


def _body_to_wait_for(head: bytes) -> int:
    """How much of the body to buffer before a thread (0: none); see ready_for_thread."""
    if _CHUNKED.search(head) or _EXPECT.search(head):
        return 0
    lengths = _CONTENT_LENGTH.findall(head)
    if len(lengths) != 1:
        return 0
    length = int(lengths[0])
    return 0 if length > BUFFERED_BODY else length


def _head_end(data: bytes | bytearray, scan_from: int = 0) -> int | None:
    """Offset just past the head's empty line, or None while it is incomplete."""
    start = 2 if data.startswith(b"\r\n") else 0
    if data.startswith(b"\r\n", start):
        # An empty request line after the one tolerated empty line: complete,
        # in the sense that the parser refuses it without waiting for more.
        return start + 2 if len(data) >= start + 2 else None
    found = data.find(_END, max(start, scan_from))
    return None if found == -1 else found + len(_END)


def head_limit(cfg: Any) -> int:
    """The most bytes to buffer: a head as large as the parser accepts, and a small body.

    From gunicorn's limit_request_line / _fields / _field_size, so a head the
    parser accepts is never cut short here; capped at 1 MiB per connection.
    """
    line = cfg.limit_request_line if cfg.limit_request_line > 0 else _MAX_REQUEST_LINE
    fields = cfg.limit_request_fields if 0 < cfg.limit_request_fields <= _MAX_HEADERS else 100
    size = cfg.limit_request_field_size if cfg.limit_request_field_size > 0 else _DEFAULT_FIELD_SIZE
    return min(2 + line + 2 + fields * (size + 2) + 2, _CEILING) + BUFFERED_BODY
