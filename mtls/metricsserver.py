"""The plain-HTTP listener on MTLS_METRICS_BIND: ``/metrics`` and ``/healthz``, no client cert.

Load balancer and Kubernetes probes, and Prometheus, come here instead of
the mTLS port: they need no certificate of their own, and their connections
no longer show up as refused handshakes. It runs as a daemon thread of the
gunicorn master, which knows the current state and the reloads; only
127.0.0.1 (or an address the operator picks) should be bound, since it is
unauthenticated (it exposes no user data, only what this page lists).
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mtls.forkquiet import fork_quiet
from mtls.health import assess
from mtls.metrics import MasterFacts, exposition
from mtls.reloadstatus import ReloadStatus
from mtls.serverstate import TlsState

Source = Callable[[], tuple[TlsState, ReloadStatus]]


# Scrapes served at once; beyond it a connection is closed unanswered. With
# the per-request timeout this bounds the master's threads and descriptors
# whatever a peer on the metrics port does (hostile review: 300 silent
# sockets had grown the master by 300 threads, for good).
MAX_CONCURRENT = 8
TIMEOUT = 5.0


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT  # socketserver applies it to each connection: a stalled peer is dropped

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            return self._metrics()
        if path == "/healthz":
            state, reloads = self.server.source()
            snapshot, now = reloads.snapshot(), datetime.datetime.now(datetime.UTC)
            with fork_quiet():  # assess reads the certificate (cryptography): mtls.forkquiet
                health = assess(state, snapshot, now)
            body = json.dumps(health.body).encode()
            return self._send(health.http_status, body, "application/json")
        self._send(404, b'{"message": "Not found"}', "application/json")

    def _metrics(self) -> None:
        """The workers' files are read while workers come and go (a reload forks new
        ones as old ones exit): a read that meets a file mid-change is tried again,
        and a scrape that still fails gets a 500 and a log line, never a dropped
        connection. (Seen: a new worker's file read between prometheus_client's
        open and its truncate to size, empty, raised struct.error; the scrape
        under a reload lost its connection.) The files are read outside
        fork_quiet(): they need no lock a child would inherit (mtls.forkquiet),
        and a fork would wait for the whole scrape; MasterFacts takes it only
        around its certificate reads."""
        for attempt in range(3):
            try:
                body, content_type = exposition(self.server.facts)
            except Exception:
                if attempt == 2:
                    self.server.log.exception("mTLS metrics: collecting the workers' files failed")
                    body = b'{"message": "metrics collection failed; see the error log"}'
                    return self._send(500, body, "application/json")
                time.sleep(0.05)
            else:
                return self._send(200, body, content_type)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")  # one request per connection: nothing lingers
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        return None  # scrapes every few seconds would drown the error log


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over MAX_CONCURRENT: no thread for it
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def __init__(self, address: tuple[str, int], source: Source, log: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        super().__init__(address, _Handler)
        self.source = source
        self.facts = MasterFacts(source)
        self.log = log


def serve(address: tuple[str, int], source: Source, log: Any) -> _Server:
    """Bind now (a taken port is a start-up error), serve from a daemon thread."""
    server = _Server(address, source, log)
    thread = threading.Thread(target=server.serve_forever, name="mtls-metrics", daemon=True)
    thread.start()
    return server
