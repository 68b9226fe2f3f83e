"""Issue 13, target 6: a legitimate request while 1,000 pre-handshake connections stall.

Not a CPU figure, so not a round of its own: once, after the rounds, on our
server only. The stalled peers connect and send nothing (the cheapest
attack: no TLS at all); each then sits in the worker's bounded handshake
set (MTLS_MAX_HANDSHAKES, 1,000 per worker) until MTLS_HANDSHAKE_TIMEOUT.
Then PROBES legitimate requests, each on a new mTLS connection, are timed
at the client, wall clock, handshake included. tests/test_hostile_peers.py
checks the behaviour; this only measures it.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import ssl
import statistics
import time

from bench.clients import HOST, connect, read_response, request_bytes

STALLED = 1000
PROBES = 5


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def legit_latency(port: int, ctx: ssl.SSLContext, path: str, body: bytes) -> dict[str, object]:
    """Open STALLED silent connections, then time PROBES requests; every socket closed after."""
    _raise_fd_limit(STALLED + 64)
    stalled: list[socket.socket] = []
    latencies: list[float] = []
    errors: list[str] = []
    try:
        for _ in range(STALLED):
            try:
                stalled.append(socket.create_connection((HOST, port), timeout=5))
            except OSError as e:
                errors.append(f"stalled connection {len(stalled) + 1}: {e}")
                break
        for _ in range(PROBES):
            started = time.perf_counter()
            try:
                with connect(port, ctx) as sock:
                    sock.sendall(request_bytes(path, close=True))
                    status, _, answer = read_response(sock, bytearray())
                if (status, answer) != (200, body):
                    errors.append(f"probe answered {status}")
                    continue
            except Exception as e:  # a measurement: say what happened, do not stop the run
                errors.append(f"probe: {type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - started)
    finally:
        for s in stalled:
            s.close()
    return {
        "stalled": len(stalled),
        "probes": PROBES,
        "latency_s": statistics.median(latencies) if latencies else None,
        "max_latency_s": max(latencies) if latencies else None,
        "errors": errors,
        "ok": len(latencies) == PROBES and len(stalled) == STALLED,
    }
