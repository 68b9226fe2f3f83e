"""New-connection handshakes/s and cross-worker session resumption: our worker vs stock gunicorn.

Both servers run side by side in the same run on the same PKI and the same
tiny WSGI app, and the rounds are interleaved (stock, ours, stock, ours...),
so the machine's noise hits both alike; what is reported is the ratio.

    .venv/bin/python bench/handshakes.py [--seconds 3] [--rounds 3] [--clients 4]

Stock: `gunicorn -k gthread --certfile --keyfile --ca-certs --cert-reqs 2`
(gunicorn 27 builds an SSLContext per connection, re-reading the files).
Ours: `gunicorn -c gunicorn_conf.py` (one context built in the master).
Load loops are bounded in time and count; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import ssl
import statistics
import sys
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pki import cli as pki_cli
from tests.servers import (
    client_context,
    free_port,
    running,
    server_env,
)

MAX_CONNECTIONS_PER_ROUND = 200_000
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def one_connection(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> ssl.SSLSession | None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(REQUEST)
            while tls.recv(65536):
                pass
            return tls.session if not tls.session_reused else session


def _client_loop(port: int, pki: Path, deadline: float, total: Synchronized) -> None:  # type: ignore[type-arg]
    ctx = client_context(pki, "homepage")
    done = 0
    while time.monotonic() < deadline and done < MAX_CONNECTIONS_PER_ROUND:
        one_connection(port, ctx, None)
        done += 1
    with total.get_lock():
        total.value += done


def handshakes_per_second(port: int, pki: Path, seconds: float, clients: int) -> float:
    """Full handshakes (no resumption) + one request each, from `clients` processes.

    Processes, not threads: a GIL-bound client would be the bottleneck and
    hide the server's cost, which is what is being compared.
    """
    total = multiprocessing.Value("l", 0)
    start = time.monotonic()
    procs = [
        multiprocessing.Process(target=_client_loop, args=(port, pki, start + seconds, total))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return float(total.value) / (time.monotonic() - start)


def resumption_rate(port: int, ctx: ssl.SSLContext, attempts: int) -> float:
    """Share of reconnects that resumed the previous session (any worker may accept them)."""
    session = None
    resumed = 0
    for _ in range(attempts):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                tls.sendall(REQUEST)
                while tls.recv(65536):
                    pass
                resumed += tls.session_reused
                session = tls.session
    return resumed / attempts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--resume-attempts", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        assert pki_cli.main(["demo", "--dir", str(pki)]) == 0
        ctx = client_context(pki, "homepage")
        env = server_env(pki, "userservice", MTLS_RELOAD_INTERVAL="0")
        port = free_port()
        stock_args = (
            "--worker-class",
            "gthread",
            "--certfile",
            env["MTLS_CERTFILE"],
            "--keyfile",
            env["MTLS_KEYFILE"],
            "--ca-certs",
            env["MTLS_CA_CERTS"],
            "--cert-reqs",
            "2",
        )
        common = {"GUNICORN_CMD_ARGS": "--workers 2 --threads 4"}
        with (
            running("echo_app:app", {**common, **env}, Path(tmp) / "ours.log", ctx) as ours,
            running(
                "echo_app:app",
                {**common, **env, "MTLS_CERTFILE": ""},
                Path(tmp) / "stock.log",
                ctx,
                port=port,
                args=stock_args,
                config=Path(__file__).parent / "stock_conf.py",
            ) as stock,
        ):
            rates: dict[str, list[float]] = {"stock": [], "ours": []}
            for r in range(args.rounds):
                for name, server in (("stock", stock), ("ours", ours)):
                    rate = handshakes_per_second(server.port, pki, args.seconds, args.clients)
                    rates[name].append(rate)
                    print(f"round {r + 1}: {name:5s} {rate:8.1f} handshakes/s", flush=True)
            resumed = {
                name: resumption_rate(server.port, ctx, args.resume_attempts)
                for name, server in (("stock", stock), ("ours", ours))
            }
    stock_med = statistics.median(rates["stock"])
    ours_med = statistics.median(rates["ours"])
    print()
    print(
        f"new-connection handshakes/s (median of {args.rounds}): "
        f"stock {stock_med:.1f}, ours {ours_med:.1f}"
    )
    print(f"ratio ours/stock: {ours_med / stock_med:.2f}x")
    print(
        f"session resumption over {args.resume_attempts} reconnects (2 workers): "
        f"stock {resumed['stock']:.0%}, ours {resumed['ours']:.0%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
