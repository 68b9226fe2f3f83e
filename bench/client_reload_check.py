"""What the client's rotation check costs a new connection, next to what the connection costs.

``mtls.clientidentity.IdentityFiles.current()`` runs once per new connection
(three ``os.stat`` calls and a tuple compare when nothing changed). Measured
here on the demo PKI: the bare stats, ``current()`` with unchanged files, a
full reload (what a changed set costs once), and a TLS 1.3 mTLS handshake on
loopback against an in-process server for scale.

    .venv/bin/python bench/client_reload_check.py [--count 20000]

Bounded in count; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtls.clientidentity import IdentityFiles, stamp_of
from mtls.credentials import build_client_context
from pki import cli as pki_cli


def per_call(fn: Callable[[], object], count: int) -> float:
    """Best of 5 runs of ``count`` calls, in microseconds per call (the least noisy)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def handshake_us(pki: Path, client: ssl.SSLContext, count: int) -> float:
    """Microseconds per TCP connect + TLS 1.3 mTLS handshake + close, best of 5."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki / "userservice-chain.crt", pki / "userservice.key")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(pki / "root.crt")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    total = count * 5

    def serve() -> None:
        for _ in range(total):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def one() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"x")

    try:
        return per_call(one, count)
    finally:
        thread.join(timeout=10)
        listener.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="calls per run (5 runs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        assert pki_cli.main(["demo", "--dir", str(pki)]) == 0
        cert, key, ca = pki / "homepage-chain.crt", pki / "homepage.key", pki / "root.crt"
        files = IdentityFiles(cert, key, ca, None)
        stats = per_call(lambda: stamp_of(tuple(map(str, files.paths))), args.count)
        unchanged = per_call(files.current, args.count)
        reload = per_call(lambda: build_client_context(cert, key, ca, None), args.count // 100 or 1)
        handshake = handshake_us(pki, files.current().context, args.count // 100 or 1)
    print(f"3 x os.stat (stamp_of)           {stats:8.2f} us")
    print(f"current(), files unchanged       {unchanged:8.2f} us  (per new connection)")
    print(f"full reload (build the context)  {reload:8.1f} us  (once per changed set)")
    print(f"TLS 1.3 mTLS handshake, loopback {handshake:8.1f} us")
    print(f"check / handshake                {unchanged / handshake:8.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
