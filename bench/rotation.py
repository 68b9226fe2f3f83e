"""`python -m bench.rotation`: requests under load while the server certificate rotates.

Issue 12 asks for zero failed requests and the p99 latency during a
rotation under load. Three runs of the same load, one after the other,
on the same server shape as `make bench` (ours, 2 workers x 4 threads,
pinned to CPU 0, clients on CPU 1):

- ``steady``: no rotation, the baseline;
- ``in place``: `pki renew userservice --new-key` every ROTATE_EVERY_S,
  picked up by the watcher (MTLS_RELOAD_INTERVAL=0.2) and swapped into the
  running workers (mtls.statechannel);
- ``SIGHUP``: the same renewals, each followed by SIGHUP with the watcher
  off: gunicorn's full reload, new workers importing the app again (what
  every rotation cost before the in-place swap).

The load: CLIENTS threads, each on a keep-alive connection that it replaces
every NEW_CONNECTION_EVERY requests (so handshakes happen throughout) or
when the server says ``Connection: close``. A request whose reused
connection turns out dead before any answer is sent again once on a new
connection, as urllib3 and requests do; that is counted as ``retried``, a
request that fails on a fresh connection as ``failed``. Latency is per
request, wall clock at the client, handshake included when there is one.
Writes bench/ROTATION.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.app import BODY, PATH
from bench.clients import ResponseError, connect, read_response, request_bytes
from bench.servers import Pki, Server
from pki import cli as pki_cli

HERE = Path(__file__).resolve().parent
CLIENTS = 4
NEW_CONNECTION_EVERY = 20
ROTATE_EVERY_S = 2.0
SECONDS = 16.0
MAX_REQUESTS_PER_CLIENT = 200_000


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    retried: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    mode: str
    requests: int
    failed: int
    retried: int
    rotations: int
    workers_started: int  # worker processes seen that were not there at the start
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: tuple[str, ...]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (0 < fraction <= 1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def _client(port: int, ctx: ssl.SSLContext, stop: threading.Event, tally: Tally) -> None:
    sock: socket.socket | None = None
    buffered = bytearray()
    used = 0
    for _ in range(MAX_REQUESTS_PER_CLIENT):
        if stop.is_set():
            break
        started = time.perf_counter()
        for attempt in (1, 2):
            fresh = sock is None
            try:
                if sock is None:
                    sock, buffered, used = connect(port, ctx), bytearray(), 0
                sock.sendall(request_bytes(PATH, close=False))
                status, headers, body = read_response(sock, buffered)
                used += 1
                if (status, body) != (200, BODY):
                    raise ResponseError(f"status {status}")
            except (OSError, ResponseError) as e:
                if sock is not None:
                    sock.close()
                sock = None
                if fresh or attempt == 2:
                    tally.failed += 1
                    tally.errors.append(f"{type(e).__name__}: {e}")
                    break
                tally.retried += 1
                continue
            tally.latencies.append(time.perf_counter() - started)
            if headers.get("connection") == "close" or used >= NEW_CONNECTION_EVERY:
                sock.close()
                sock = None
            break
    if sock is not None:
        sock.close()


@dataclass
class WatchedServer(Server):
    """Ours as `make bench` runs it, with the file watcher on or off."""

    reload_interval: str = "0"

    def command(self, pki: Pki, work: Path) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command(pki, work)
        return argv, {**env, "MTLS_RELOAD_INTERVAL": self.reload_interval}


def run_mode(mode: str, pki: Pki, work: Path, seconds: float, pin: bool) -> Outcome:
    server = WatchedServer(
        name=f"rotation-{mode.replace(' ', '-')}",
        label=mode,
        kind="ours",
        reload_interval="0.2" if mode == "in place" else "0",
    )
    server.start(pki, work, pin)
    first_workers = set(server.worker_pids())
    seen = set(first_workers)
    stop = threading.Event()
    tallies = [Tally() for _ in range(CLIENTS)]
    ctx = pki.client_context()
    threads = [threading.Thread(target=_client, args=(server.port, ctx, stop, t)) for t in tallies]
    rotations = 0
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + seconds
        next_rotation = time.monotonic() + ROTATE_EVERY_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
            seen.update(server.worker_pids())
            if mode == "steady" or time.monotonic() < next_rotation:
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                renewed = pki_cli.main(["renew", "userservice", "--dir", str(pki.dir), "--new-key"])
            if renewed != 0:
                raise SystemExit("bench.rotation: `pki renew` failed; see its output")
            if mode == "SIGHUP":
                os.kill(server.pid, signal.SIGHUP)
            rotations += 1
            next_rotation += ROTATE_EVERY_S
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.stop()
    latencies = [x for t in tallies for x in t.latencies]
    if not latencies:
        raise SystemExit(f"bench.rotation: no request completed in mode {mode!r}")
    return Outcome(
        mode=mode,
        requests=len(latencies),
        failed=sum(t.failed for t in tallies),
        retried=sum(t.retried for t in tallies),
        rotations=rotations,
        workers_started=len(seen - first_workers),
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=max(latencies) * 1000,
        errors=tuple(sorted({e for t in tallies for e in t.errors}))[:5],
    )


def render(outcomes: list[Outcome], seconds: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Certificate rotation under load (`python -m bench.rotation`)",
        "",
        f"Run of {when}: each mode {seconds:.0f} s, {CLIENTS} client threads, a new connection "
        f"every {NEW_CONNECTION_EVERY} requests (or on `Connection: close`), `pki renew "
        f"userservice --new-key` every {ROTATE_EVERY_S:g} s; ours with 2 workers x 4 threads. "
        "Latency per request at the client, handshake included; see bench/rotation.py.",
        "",
        "| mode | requests | failed | retried once | rotations | workers started | "
        "p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.mode} | {o.requests:,} | {o.failed} | {o.retried} | {o.rotations} | "
            f"{o.workers_started} | {o.p50_ms:.2f} | {o.p99_ms:.2f} | {o.max_ms:.1f} |"
        )
    errors = [f"- {o.mode}: {e}" for o in outcomes for e in o.errors]
    if errors:
        lines += ["", "Errors seen (first of each kind):", "", *errors]
    lines += [
        "",
        "`failed`: a request that got no 200 even on a fresh connection. `retried once`: its "
        "reused connection was dead before the answer (closed by a stopping worker), and it "
        "succeeded on a new one, as urllib3 retries. `workers started`: worker processes that "
        "were not there at the start (SIGHUP replaces both on every rotation).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rotation", description=__doc__)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per mode (default 16)")
    parser.add_argument("--out", type=Path, default=HERE, help="where ROTATION.md goes")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin CPUs")
    a = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mtls-rotation-") as tmp:
        work = Path(tmp)
        pki = Pki(work / "pki")
        with contextlib.redirect_stdout(io.StringIO()):
            built = pki_cli.main(["demo", "--dir", str(pki.dir)])
        if built != 0:
            raise SystemExit("bench.rotation: `pki demo` failed; see its output")
        outcomes = [
            run_mode(m, pki, work, a.seconds, a.pin) for m in ("steady", "in place", "SIGHUP")
        ]
    text = render(outcomes, a.seconds)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "ROTATION.md").write_text(text)
    print(text)
    print(f"wrote {a.out / 'ROTATION.md'}")
    return 1 if any(o.failed for o in outcomes if o.mode != "SIGHUP") else 0


if __name__ == "__main__":
    sys.exit(main())
