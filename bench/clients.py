"""The bench's clients: `openssl s_time` for handshakes, our own HTTP/1.1 client for keep-alive.

`ab -k` cannot present a client certificate, so keep-alive load comes from a
small client of our own: C connections, one thread each, one request in
flight per connection (RFC 9112 persistence, no pipelining), every response
parsed (status, Content-Length, the X-Pid header bench/app.py sets) so an
error page or a short body is counted as a failure, never as throughput.
Every loop is bounded by a deadline AND a request count; only 127.0.0.1.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
MAX_REQUESTS_PER_CONNECTION_LOOP = 2_000_000
S_TIME_SLACK_S = 30.0


@dataclass
class LoadResult:
    """What one client run did; `ops` counts only complete 200 responses (or s_time connections)."""

    ops: int
    wall_s: float
    failures: int = 0
    by_pid: Counter[str] = field(default_factory=Counter)
    resumed_fraction: float | None = None
    bytes_per_op: float | None = None
    detail: str = ""


# ---------------------------------------------------------------- openssl s_time

_S_TIME_TOTAL = re.compile(
    r"(\d+) connections in [\d.]+s; [\d.]+ connections/user sec, bytes read (\d+)"
)
_S_TIME_MARKS = re.compile(r"[*r]+")


def s_time_argv(
    port: int, mode: str, seconds: int, cert: Path, key: Path, chain_store: Path, path: str | None
) -> list[str]:
    """`openssl s_time` with a client certificate.

    s_time's -cert sends only the leaf of the file; OpenSSL adds the
    intermediate from the verify store given by -CAfile, so `chain_store` must
    hold root + intermediate (the servers trust the root only).
    `path` None = bare handshake (no HTTP); otherwise `GET path HTTP/1.0`.
    """
    if mode not in ("new", "reuse"):
        raise ValueError(f"s_time mode {mode!r}: use 'new' or 'reuse'")
    argv = ["openssl", "s_time", "-connect", f"{HOST}:{port}", f"-{mode}", "-time", str(seconds)]
    argv += ["-cert", str(cert), "-key", str(key), "-CAfile", str(chain_store)]
    if path is not None:
        argv += ["-www", path]
    return argv


def parse_s_time(output: str) -> LoadResult:
    """Connections done, bytes read and, from the per-connection marks, the share resumed.

    s_time prints one mark per connection: '*' a full handshake, 'r' a
    resumed session. With -reuse the first connection is always full.
    """
    totals = _S_TIME_TOTAL.findall(output)
    if not totals:
        raise ValueError(f"openssl s_time printed no 'N connections in' total:\n{output[-1500:]}")
    ops, nbytes = (int(v) for v in totals[-1])
    marks = "".join(
        m for line in output.splitlines() if (m := line.strip()) and _S_TIME_MARKS.fullmatch(m)
    )
    resumed = marks.count("r") / len(marks) if marks else None
    return LoadResult(
        ops=ops, wall_s=0.0, resumed_fraction=resumed, bytes_per_op=nbytes / max(ops, 1)
    )


def run_s_time(argv: list[str], seconds: int) -> LoadResult:
    started = time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + S_TIME_SLACK_S, check=False
    )
    result = parse_s_time(proc.stdout + proc.stderr)
    result.wall_s = time.monotonic() - started
    if proc.returncode != 0:
        result.failures += 1
        result.detail = f"s_time exit {proc.returncode}: {proc.stderr[-500:]}"
    return result


# ---------------------------------------------------------------- own HTTP/1.1 client


class ResponseError(Exception):
    """The server's answer was not a complete HTTP/1.1 response."""


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response: (status, lower-cased headers, body); bytes past it stay in `buffered`."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            raise ResponseError("connection closed before the end of the response head")
        buffered += chunk
    head_end = buffered.index(b"\r\n\r\n")
    head = bytes(buffered[:head_end]).decode("latin-1").split("\r\n")
    del buffered[: head_end + 4]
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ResponseError(f"not an HTTP/1.x status line: {head[0]!r}")
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    if length < 0:
        raise ResponseError("response without Content-Length (the bench app always sends one)")
    while len(buffered) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ResponseError("connection closed inside the body")
        buffered += chunk
    body = bytes(buffered[:length])
    del buffered[:length]
    return int(parts[1]), headers, body


def request_bytes(path: str, close: bool) -> bytes:
    conn = "close" if close else "keep-alive"
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {conn}\r\n\r\n".encode()


def connect(port: int, ctx: ssl.SSLContext | None) -> socket.socket:
    raw = socket.create_connection((HOST, port), timeout=10)
    if ctx is None:
        return raw
    return ctx.wrap_socket(raw, server_hostname="localhost")


@dataclass
class _Tally:
    ops: int = 0
    failures: int = 0
    by_pid: Counter[str] = field(default_factory=Counter)
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _connection_loop(
    port: int,
    ctx: ssl.SSLContext | None,
    path: str,
    body: bytes,
    deadline: float,
    budget: int,
    per_connection: int,
    tally: _Tally,
) -> None:
    """Requests until the deadline or the budget; reconnect when the server closes.

    per_connection=1 gives "new connection + one request" (Connection: close).
    """
    ops = failures = 0
    pids: Counter[str] = Counter()
    error = ""
    keep = request_bytes(path, close=False)
    last = request_bytes(path, close=True)
    while ops + failures < budget and time.monotonic() < deadline:
        try:
            with connect(port, ctx) as sock:
                buffered = bytearray()
                for n in range(per_connection):
                    if ops + failures >= budget or time.monotonic() >= deadline:
                        break
                    sock.sendall(last if n == per_connection - 1 else keep)
                    status, headers, got = read_response(sock, buffered)
                    if status == 200 and got == body:
                        ops += 1
                        pids[headers.get("x-pid", "?")] += 1
                    else:
                        failures += 1
                        error = f"status {status}, {len(got)} body bytes"
                    if headers.get("connection", "").lower() == "close":
                        break
        except (OSError, ResponseError, ValueError) as exc:
            failures += 1
            error = f"{type(exc).__name__}: {exc}"
    with tally.lock:
        tally.ops += ops
        tally.failures += failures
        tally.by_pid.update(pids)
        tally.last_error = error or tally.last_error


def http_load(
    port: int,
    ctx: ssl.SSLContext | None,
    path: str,
    body: bytes,
    *,
    connections: int,
    seconds: float,
    max_requests: int,
    per_connection: int = MAX_REQUESTS_PER_CONNECTION_LOOP,
) -> LoadResult:
    """`connections` clients in threads, together at most `max_requests` and `seconds`.

    Threads, not processes: the client is pinned to its own core anyway, and
    one request in flight per connection is what a pooled service client does.
    """
    tally = _Tally()
    started = time.monotonic()
    deadline = started + seconds
    budget = max(1, max_requests // connections)
    threads = [
        threading.Thread(
            target=_connection_loop,
            args=(port, ctx, path, body, deadline, budget, per_connection, tally),
            daemon=True,
        )
        for _ in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return LoadResult(
        ops=tally.ops,
        wall_s=time.monotonic() - started,
        failures=tally.failures,
        by_pid=tally.by_pid,
        detail=tally.last_error,
    )


def busiest_share(by_pid: Counter[str]) -> float | None:
    """Fraction of the requests the busiest worker answered (0.5 = perfectly even over 2)."""
    total = sum(by_pid.values())
    return max(by_pid.values()) / total if total else None


def resumption_by_worker(
    port: int, ctx: ssl.SSLContext, path: str, attempts: int
) -> dict[str, list[int]]:
    """X-Pid -> [resumed, connections]: which workers resumed a session another one issued.

    Sequential connections, each offering the session of the previous one
    (TLS 1.3 tickets arrive after the handshake, so the session is taken after
    the response). The first connection is a full handshake by necessity.
    """
    out: dict[str, list[int]] = {}
    session: ssl.SSLSession | None = None
    for _ in range(attempts):
        raw = socket.create_connection((HOST, port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(request_bytes(path, close=True))
            _, headers, _ = read_response(tls, bytearray())
            tally = out.setdefault(headers.get("x-pid", "?"), [0, 0])
            tally[0] += 1 if tls.session_reused else 0
            tally[1] += 1
            session = tls.session
    return out
