"""The worker's accept path in-process: what a connection holds before its peer has spoken.

A real MtlsWorker, not forked and without gunicorn's loop: the state and
listener context the master would hand it (mtls.hooks.pre_fork), a poller,
and a real listening socket on 127.0.0.1. The test drives the poller itself,
one event at a time, so it can look at the connection between steps, which a
server in a subprocess does not show.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from mtls.requesthead import head_limit
from mtls.serverconn import BoundedSSLSocket, MtlsConn
from mtls.serverstate import load_tls_state
from mtls.settings import ServerSettings
from mtls.tls import ListenerContexts
from mtls.worker import MtlsWorker
from tests.servers import client_context, server_env

STEPS = 50  # poller turns a local handshake may take, at most
TURN_S = 2.0  # seconds one turn may wait for an event


@pytest.fixture
def worker(demo_pki: Path) -> Iterator[MtlsWorker]:
    cfg = Config()
    w = MtlsWorker(1, 0, [], None, 30, cfg, Logger(cfg))
    settings = ServerSettings.from_env(server_env(demo_pki, "userservice"))
    w.tls_state = load_tls_state(settings)
    w.listener = ListenerContexts(settings, w.tls_state.context)
    w.listener.session.sslsocket_class = BoundedSSLSocket  # as init_process does
    w.handshaking.limit = settings.max_handshakes
    w.idle.limit = 10
    w._head_limit = head_limit(cfg)
    w.poller = selectors.DefaultSelector()
    try:
        yield w
    finally:
        for conn in [*w.handshaking, *w.idle]:
            w._close_idle(conn)
        w.poller.close()
        w.tmp.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(TURN_S)
        yield sock


def _accept_one(worker: MtlsWorker, listener: socket.socket) -> tuple[socket.socket, MtlsConn]:
    client = socket.create_connection(listener.getsockname(), timeout=TURN_S)
    worker.accept(listener)
    (conn,) = list(worker.handshaking)
    return client, conn


def _turn(worker: MtlsWorker) -> None:
    for key, _ in worker.poller.select(TURN_S):
        key.data(key.fileobj)


def test_a_silent_peer_gets_no_tls_object(worker: MtlsWorker, listener: socket.socket) -> None:
    """A wrapped socket costs ~9 KiB that glibc keeps once freed; a full table of silent peers
    (MTLS_MAX_HANDSHAKES) made every worker ~9 MiB larger for good. Wrapped only once the peer
    has sent something, a silent peer holds its bare socket and nothing of OpenSSL's."""
    client, conn = _accept_one(worker, listener)
    with client:
        assert conn.phase == "tls"
        assert not isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock is conn.raw
        assert not conn.heard_from


def test_a_peer_wrapped_after_its_first_bytes_completes_its_handshake(
    worker: MtlsWorker, listener: socket.socket, demo_pki: Path
) -> None:
    """Waiting on the bare socket, then on the wrapped one: the poller follows the socket swap."""
    raw, conn = _accept_one(worker, listener)
    raw.setblocking(False)
    ctx = client_context(demo_pki, "homepage")
    with ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False) as tls:
        done = False
        for _ in range(STEPS):
            if not done:
                with contextlib.suppress(ssl.SSLWantReadError):
                    tls.do_handshake()
                    done = True
            if conn.phase != "tls":
                break
            _turn(worker)
        assert conn.phase == "idle", conn.phase
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.peer is not None
        assert conn.tls_environ["SSL_CLIENT_VERIFY"] == "SUCCESS"
        # Waiting for its first request on the wrapped socket, not the detached bare one.
        assert worker.poller.get_key(conn.sock).fileobj is conn.sock
