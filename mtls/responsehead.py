"""Whether a response head gunicorn writes may wait for the body's first bytes (pure).

gunicorn writes a response in two ``sendall`` calls, the head (status line
and headers) and then the body; over TLS each is a record of its own and a
syscall of its own, ~11 us of a ~250 us keep-alive request for a small
response (bench/RESULTS.md notes). The worker's socket holds the head and
sends it with the next write, in one record, when that next write is sure
to come at once: gunicorn's ``Response.write`` sends the head and then,
in the same call, the body bytes, for any response that has a body of
known, non-zero length. So a head is held only when it declares
``Content-Length`` > 0, is not chunked (an empty first chunk writes
nothing, and a streaming app may wait before the next) and its status
allows a body (not 1xx, 204, 304: RFC 9110 section 6.4.1; HEAD requests
are never held, mtls.worker). Anything else is sent as gunicorn sends it.
"""

from __future__ import annotations

import re

# A head longer than this is sent at once: joining would copy it for nothing.
MAX_HELD_HEAD = 16 * 1024
# A body write longer than this goes out after the held head, not copied onto it.
MAX_JOINED_BODY = 64 * 1024
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]{1,19})[ \t]*(?=\r\n)")
_CHUNKED = b"\r\ntransfer-encoding"


def may_wait_for_body(head: object) -> bool:
    """Whether ``head`` (what gunicorn passes to sendall) is a response head worth holding."""
    if not isinstance(head, bytes) or len(head) > MAX_HELD_HEAD:
        return False
    if not head.startswith(b"HTTP/1.") or not head.endswith(b"\r\n\r\n"):
        return False
    status = head[9:12]
    if not status.isdigit() or status.startswith(b"1") or status in (b"204", b"304"):
        return False
    lowered = head.lower()
    if _CHUNKED in lowered:
        return False
    lengths = _CONTENT_LENGTH.findall(lowered)
    return len(lengths) == 1 and int(lengths[0]) > 0
