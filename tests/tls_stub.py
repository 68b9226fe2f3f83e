"""A real HTTPS server in a thread, standing in for the User Service.

``http.server``'s ThreadingHTTPServer behind an ``ssl`` context built from the
demo PKI. The TLS handshake runs in each connection's own thread, so a stuck
client cannot block ``accept``; every handshake failure, connection and
request is recorded for the tests to assert on. The socket listens as soon
as the object exists, so there is nothing to wait for before connecting.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from mtls.dn import format_dn

HANG: Literal["hang"] = "hang"  # read the request, never answer
DROP: Literal["drop"] = "drop"  # read the request, close the connection without a word


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    connection: int  # 1-based, in handshake order
    nth: int  # 1-based request number on that connection
    method: str
    path: str
    client_dn: str


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # JSON-able, or bytes sent as they are
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # extra ones, e.g. (("Location", url),)


Action = Reply | Literal["hang", "drop"]
Responder = Callable[[Seen], Action]


def routes(table: Mapping[str, Reply]) -> Responder:
    """Answer by exact path (query included); anything else is a JSON 404."""
    missing = Reply(404, {"message": "Not Found"})
    return lambda seen: table.get(seen.path, missing)


def server_context(
    pki: Path,
    cert: str = "userservice",
    *,
    trust: str = "root.crt",
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """Present pki/CERT-chain.crt, require a client certificate chaining to pki/TRUST."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / f"{cert}-chain.crt", pki / f"{cert}.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(pki / trust)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


class StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, context: ssl.SSLContext, responder: Responder, host: str = "127.0.0.1"
    ) -> None:
        self.context = context
        self.responder = responder
        self.seen: list[Seen] = []
        self.handshake_errors: list[BaseException] = []
        self.connections = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._local = threading.local()
        super().__init__((host, 0), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"https://{host!s}:{port}"

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handshake here, in the connection's thread, then serve HTTP over TLS."""
        request.settimeout(5)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            with self._lock:
                self.handshake_errors.append(exc)
            return
        try:
            der = tls.getpeercert(binary_form=True)
            # CERT_REQUIRED (server_context): no handshake completes without one.
            assert der is not None, "the client presented no certificate"
            with self._lock:
                self.connections += 1
                self._local.connection = self.connections
            self._local.nth = 0
            self._local.client_dn = format_dn(x509.load_der_x509_certificate(der).subject)
            _Handler(tls, client_address, self)  # our RequestHandlerClass
        finally:
            tls.close()  # no close_notify: to the client, a DROP looks like a server going away

    def record(self, method: str, path: str) -> Seen:
        self._local.nth += 1
        seen = Seen(self._local.connection, self._local.nth, method, path, self._local.client_dn)
        with self._lock:
            self.seen.append(seen)
        return seen


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client can reuse connections
    wbufsize = 65536  # headers + body in one write: no Nagle/delayed-ACK stall
    server: StubServer

    def _respond(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        action = self.server.responder(self.server.record(self.command, self.path))
        if action == HANG:
            self.server.stopping.wait(30)
            self.close_connection = True
            return
        if action == DROP:
            self.close_connection = True
            return
        assert isinstance(action, Reply)
        body = action.body if isinstance(action.body, bytes) else json.dumps(action.body).encode()
        self.send_response(action.status)
        self.send_header("Content-Type", action.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in action.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _respond

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on ``seen`` instead."""


@contextmanager
def serving(server: StubServer) -> Iterator[StubServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def silent_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that accepts TCP (the kernel completes it) but never says a word."""
    with socket.create_server((host, 0)) as sock:
        yield sock.getsockname()[1]


@contextmanager
def closed_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that refuses connections: bound, so nobody else takes it, but not listening."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        yield sock.getsockname()[1]
