"""A response head and its body in one TLS record: which heads wait, and the socket that holds them.

The socket tests run real TLS over a socket pair (the demo PKI's server
certificate); one ``recv`` on the client returns the data of one TLS
record at most, so a response read whole in one ``recv`` came in one record.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtls.responsehead import MAX_HELD_HEAD, may_wait_for_body
from mtls.serverconn import BoundedSSLSocket
from tests.servers import ECHO, Server, client_context, running, server_env

HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nConnection: keep-alive\r\n"
    b"Content-Type: application/json\r\nContent-Length: 8\r\n\r\n"
)
BODY = b'{"id":1}'


@pytest.mark.parametrize(
    ("head", "waits"),
    [
        (HEAD, True),
        (HEAD.replace(b"Content-Length", b"content-LENGTH"), True),
        (HEAD.replace(b"200 OK", b"404 NOT FOUND"), True),
        (HEAD.replace(b"Content-Length: 8", b"Content-Length: 0"), False),  # nothing follows
        (HEAD.replace(b"Content-Length: 8", b"Transfer-Encoding: chunked"), False),  # streaming
        (HEAD.replace(b"Content-Length: 8\r\n", b""), False),  # length unknown
        (
            HEAD.replace(b"Content-Length: 8\r\n", b"Content-Length: 8\r\nContent-Length: 9\r\n"),
            False,
        ),
        (HEAD.replace(b"200 OK", b"204 No Content"), False),  # RFC 9110: no body
        (HEAD.replace(b"200 OK", b"304 Not Modified"), False),
        (HEAD.replace(b"200 OK", b"103 Early Hints"), False),
        (HEAD[:-2], False),  # not a whole head
        (b"Content-Length: 8\r\n\r\n", False),  # not a status line
        (HEAD.replace(b"Server", b"X-Big: " + b"x" * MAX_HELD_HEAD + b"\r\nServer"), False),
        (bytearray(HEAD), False),  # gunicorn writes bytes; anything else is sent as it comes
    ],
)
def test_only_a_head_whose_body_follows_at_once_waits(head: bytes, waits: bool) -> None:
    assert may_wait_for_body(head) is waits


@pytest.fixture
def tls_pair(demo_pki: Path) -> Iterator[tuple[BoundedSSLSocket, ssl.SSLSocket]]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(demo_pki / "userservice-chain.crt", demo_pki / "userservice.key")
    server_ctx.sslsocket_class = BoundedSSLSocket
    client_ctx = ssl.create_default_context(cafile=str(demo_pki / "root.crt"))
    a, b = socket.socketpair()
    with a, b:
        server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
        client = client_ctx.wrap_socket(
            b, server_hostname="userservice.internal", do_handshake_on_connect=False
        )
        with server, client:
            server.settimeout(10)
            client.settimeout(10)
            shaking = threading.Thread(target=client.do_handshake)
            shaking.start()
            server.do_handshake()
            shaking.join(10)
            # TLS 1.3: the server's session tickets follow the handshake; read them away.
            client.setblocking(False)
            with pytest.raises(ssl.SSLWantReadError):
                client.recv(1)
            client.settimeout(10)
            assert isinstance(server, BoundedSSLSocket)
            yield server, client


def readable(sock: socket.socket) -> bool:
    """Whether bytes are waiting (a socket pair delivers a write before sendall returns)."""
    return bool(select.select([sock], [], [], 0)[0])


def test_a_held_head_goes_out_with_the_body_in_one_record(
    tls_pair: tuple[BoundedSSLSocket, ssl.SSLSocket],
) -> None:
    server, client = tls_pair
    server.hold_head = True
    server.sendall(HEAD)
    assert not readable(client)
    server.sendall(BODY)
    assert client.recv(65536) == HEAD + BODY


def test_without_hold_the_head_is_a_record_of_its_own(
    tls_pair: tuple[BoundedSSLSocket, ssl.SSLSocket],
) -> None:
    server, client = tls_pair
    server.sendall(HEAD)
    server.sendall(BODY)
    assert client.recv(65536) == HEAD
    assert client.recv(65536) == BODY


def test_only_the_first_write_is_held_and_release_sends_what_is_left(
    tls_pair: tuple[BoundedSSLSocket, ssl.SSLSocket],
) -> None:
    server, client = tls_pair
    server.hold_head = True
    server.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")  # not holdable: out at once
    assert client.recv(65536) == b"HTTP/1.1 204 No Content\r\n\r\n"
    server.sendall(HEAD)  # the hold was for the first write only
    assert client.recv(65536) == HEAD
    server.hold_head = True
    server.sendall(HEAD)
    server.release_held()
    assert client.recv(65536) == HEAD


def test_a_shutdown_sends_the_held_head_first(
    tls_pair: tuple[BoundedSSLSocket, ssl.SSLSocket],
) -> None:
    server, client = tls_pair
    server.hold_head = True
    server.sendall(HEAD)
    server.shutdown(socket.SHUT_WR)
    assert client.recv(65536) == HEAD


@pytest.fixture
def echo(demo_pki: Path, tmp_path: Path) -> Iterator[Server]:
    env = server_env(demo_pki, "userservice")
    with running(ECHO, env, tmp_path / "echo.log", client_context(demo_pki, "homepage")) as server:
        yield server


def test_the_worker_sends_a_small_response_in_one_record_and_head_without_a_body(
    echo: Server, demo_pki: Path
) -> None:
    ctx = client_context(demo_pki, "homepage")
    with socket.create_connection((echo.host, echo.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            for _ in range(3):  # the first request and kept-alive ones alike
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                response = tls.recv(65536)
                head, _, body = response.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                assert len(body) == length > 0  # all of it, from one record
            tls.sendall(b"HEAD / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            head = tls.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert head.endswith(b"\r\n\r\n")
            assert tls.recv(65536) == b""  # no body after a HEAD's head, then close


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_a_write_larger_than_the_socket_buffers_arrives_whole_and_in_order(
    tls_pair: tuple[BoundedSSLSocket, ssl.SSLSocket], kind: type
) -> None:
    """bytes take one OpenSSL write (BoundedSSLSocket._sendall), the rest ssl.py's loop."""
    server, client = tls_pair
    data = bytes(range(256)) * (4 * 4096)  # 4 MiB: many records, more than the pair buffers
    received = bytearray()

    def read_all() -> None:
        while len(received) < len(data):
            chunk = client.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    server.sendall(kind(data))
    reader.join(30)
    assert not reader.is_alive()
    assert received == data


def test_an_empty_write_sends_nothing(tls_pair: tuple[BoundedSSLSocket, ssl.SSLSocket]) -> None:
    server, client = tls_pair
    server.sendall(b"")
    assert not readable(client)
    server.sendall(BODY)
    assert client.recv(65536) == BODY
