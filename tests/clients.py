"""Clients for the test servers: raw TLS, one connection per request; mtls.client settings.

Shared by the end-to-end and client tests, so that no test module imports another.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path

from cryptography import x509

from devserver.runner import Server
from mtls.client import ClientSettings


def get(
    server: Server,
    ctx: ssl.SSLContext,
    path: str = "/",
    *,
    session: ssl.SSLSession | None = None,
    suppress_ragged_eofs: bool = True,
    timeout: float = 10.0,
) -> tuple[dict[str, str], ssl.SSLSession | None]:
    """GET ``path`` with ``ctx`` (resuming ``session``), expect a 200 with a JSON body.

    For the echo app (tests/echo_app.py) the body is the environ our worker
    built; the session is returned for a resumption on the next call.
    """
    with socket.create_connection((server.host, server.port), timeout=timeout) as raw:
        with ctx.wrap_socket(
            raw,
            server_hostname="localhost",
            session=session,
            suppress_ragged_eofs=suppress_ragged_eofs,
        ) as tls:
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            return json.loads(body), tls.session


def client_settings(pki: Path, **overrides: object) -> ClientSettings:
    """mtls.client settings presenting pki/homepage-chain.crt + key, trusting pki/root.crt."""
    base: dict[str, object] = {
        "cert": pki / "homepage-chain.crt",
        "key": pki / "homepage.key",
        "ca_certs": pki / "root.crt",
        "peer_name": "the User Service",
    }
    base.update(overrides)
    return ClientSettings(**base)  # type: ignore[arg-type]


def presented_serial(server: Server, ctx: ssl.SSLContext) -> int:
    """The serial of the certificate the server presents to a new connection made with ``ctx``."""
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der).serial_number


#: The servers' certificates name "localhost", not 127.0.0.1.
SERVER_NAME = "localhost"


class LoopbackHTTPS(http.client.HTTPSConnection):
    """http.client to a test server on 127.0.0.1, checking its certificate for "localhost".

    HTTPSConnection would resolve "localhost" itself (maybe to ::1, where
    nothing listens); this one connects to the server's own address.
    """

    def __init__(self, server: Server, ctx: ssl.SSLContext, timeout: float = 10.0) -> None:
        super().__init__(SERVER_NAME, server.port, context=ctx, timeout=timeout)
        self.address = (server.host, server.port)
        self.tls_context = ctx

    def connect(self) -> None:
        raw = socket.create_connection(self.address, self.timeout)
        self.sock = self.tls_context.wrap_socket(raw, server_hostname=SERVER_NAME)
