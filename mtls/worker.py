"""The gunicorn worker: gthread, with the TLS handshake moved to the event loop.

Stock gunicorn 27 wraps each accepted socket in a fresh SSLContext and runs
the handshake inside a pool thread with no deadline, so idle peers starve
the threads that serve requests, and no client identity reaches the app.
This worker overrides the fewest ThreadWorker methods that fix that:

- ``accept``: the socket stays in the main thread's selector. An optional
  PROXY header (from MTLS_PROXY_ALLOW_FROM only) is read off the raw socket
  before the ClientHello, then the handshake runs non-blocking against the
  master's prebuilt context, under MTLS_HANDSHAKE_TIMEOUT.
- ``murder_pending``: also closes handshakes past their deadline.
- ``handle`` / ``load_wsgi``: the identity computed once per connection is
  merged into each request's environ (mod_ssl names, SPEC).
- ``TConn.init``/``close``: the socket arrives wrapped; closing sends
  close_notify (RFC 8446 section 6.1).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import errno
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from gunicorn import http, util
from gunicorn.workers.gthread import TConn, ThreadWorker

from mtls.context import TlsState
from mtls.errors import ConfigError, ProxyHeaderError
from mtls.failures import describe_handshake_error
from mtls.identity import PEER_ENVIRON_KEY, PeerIdentity, build_tls_environ, peer_from_der
from mtls.proxyproto import Incomplete, looks_like_proxy_header, parse_proxy_header

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Enough for any PROXY v1 line and a v2 header with the TLVs HAProxy sends.
_PEEK_SIZE = 16 + 1024 + 64
# A closing connection is drained for this long / this much at most.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024


class MtlsConn(TConn):  # type: ignore[misc]
    """A connection that is TLS-handshaken (and PROXY-parsed) before any thread sees it."""

    initialized: bool

    def __init__(
        self, cfg: Any, sock: socket.socket, client: Any, server: Any, deadline: float
    ) -> None:
        super().__init__(cfg, sock, client, server)
        self.raw = sock
        self.deadline = deadline
        self.phase = "tls"
        self.proxy_buffer = b""
        self.registered = False
        self.tls_environ: dict[str, str] = {}
        self.peer: PeerIdentity | None = None
        # Set by the worker: drains a graceful close on the poller, so the
        # main thread (which runs every handshake) never waits on a peer.
        self.linger: Callable[[socket.socket], None] | None = None

    def init(self) -> None:
        # The handshake already happened on the main thread: only the parser is left.
        if self.initialized:
            return
        self.initialized = True
        self.sock.setblocking(True)
        self.parser = http.get_parser(self.cfg, self.sock, self.client)

    def close(self, graceful: bool = False) -> None:
        send_close_notify(self.sock)
        if graceful and self.linger is not None:
            # RFC 9112 9.6: FIN first, then read until the peer closes, so
            # unread request bytes don't turn our close into an RST that
            # truncates the response. gunicorn drains inline for up to 2 s.
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                util.close(self.sock)
                return
            self.linger(self.sock)
            return
        util.close(self.sock)


def send_close_notify(sock: socket.socket) -> None:
    """Send TLS close_notify without waiting for the peer's (RFC 8446 6.1).

    Without it, a client cannot tell a complete response from a truncation.
    Non-blocking, so a peer that never answers cannot hold the thread.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return
    try:
        sock.setblocking(False)
        sock.unwrap()
    except (ssl.SSLError, OSError, ValueError):
        pass  # close_notify went out (or the peer is gone); nothing to wait for


class MtlsWorker(ThreadWorker):  # type: ignore[misc]
    """gthread worker that enforces mTLS at accept time and exposes the identity."""

    wsgi: WSGIApp

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Handed over by the master in the pre_fork hook (mtls.hooks): one
        # context for all workers, built and validated before the fork.
        self.tls_state: TlsState | None = None
        self.handshaking: collections.OrderedDict[MtlsConn, None] = collections.OrderedDict()
        self._local = threading.local()
        self._quitting = False
        # Closing sockets being drained on the poller: socket -> (deadline, bytes read).
        self.lingering: collections.OrderedDict[socket.socket, tuple[float, int]] = (
            collections.OrderedDict()
        )

    # -- start-up --------------------------------------------------------

    def init_process(self) -> None:
        if self.tls_state is None:
            raise ConfigError(
                "mtls.worker.MtlsWorker got no TLS state from the master: start gunicorn "
                "with `-c gunicorn_conf.py` (its pre_fork hook hands the context over)"
            )
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = self._with_identity(self.wsgi)

    def _with_identity(self, app: WSGIApp) -> WSGIApp:
        local = self._local

        def mtls_identity(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            conn: MtlsConn = local.conn
            environ.update(conn.tls_environ)
            environ[PEER_ENVIRON_KEY] = conn.peer
            return app(environ, start_response)

        return mtls_identity

    def handle_quit(self, sig: int, frame: Any) -> None:
        # A second SIGQUIT/SIGINT (Ctrl-C reaches the worker, then the master
        # forwards SIGQUIT) would re-enter ThreadPoolExecutor.shutdown inside
        # the first one's lock and deadlock the worker; the first call exits.
        if self._quitting:
            return
        self._quitting = True
        super().handle_quit(sig, frame)

    # -- accept path: PROXY header, then TLS handshake, on the main thread --

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        assert self.tls_state is not None
        settings = self.tls_state.settings
        self.nr_conns += 1
        conn = MtlsConn(
            self.cfg,
            sock,
            addr,
            listener.getsockname(),
            deadline=time.monotonic() + settings.handshake_timeout,
        )
        conn.linger = self._linger
        self.handshaking[conn] = None
        if settings.proxy_protocol != "off" and isinstance(addr, tuple):
            conn.phase = "proxy" if settings.proxy_allowed(addr[0]) else "sniff"
        else:
            conn.phase = "start"
        self._advance(conn)

    def _advance(self, conn: MtlsConn, _fileobj: object = None) -> None:
        """One step of a connection's way to the pool; any failure refuses it, never the worker.

        A peer can reset at any moment (even before wrap_socket's
        getpeername), and nothing it does may raise into gunicorn's loop,
        which would kill the worker and every connection it holds.
        """
        if conn not in self.handshaking:
            return
        try:
            if conn.phase == "proxy":
                self._read_proxy_header(conn)
            elif conn.phase == "sniff":
                self._refuse_unexpected_proxy_header(conn)
            elif conn.phase == "start":
                self._start_tls(conn)
                self._step_handshake(conn)
            else:
                self._step_handshake(conn)
        except OSError as e:
            self._refuse(conn, describe_handshake_error(e))
        except Exception as e:
            self.log.exception("unexpected error on the mTLS accept path")
            self._refuse(conn, f"internal error ({type(e).__name__}); refused")

    def _read_proxy_header(self, conn: MtlsConn) -> None:
        assert self.tls_state is not None
        mode = self.tls_state.settings.proxy_protocol
        try:
            peeked = conn.raw.recv(_PEEK_SIZE, socket.MSG_PEEK)
        except BlockingIOError:
            return self._wait(conn, selectors.EVENT_READ)
        except OSError as e:
            return self._refuse(conn, describe_handshake_error(e))
        if not peeked:
            return self._refuse(conn, "closed before sending its PROXY header")
        data = conn.proxy_buffer + peeked
        try:
            info = parse_proxy_header(data, accept=mode)  # type: ignore[arg-type]
        except Incomplete:
            if len(data) >= _PEEK_SIZE:
                return self._refuse(conn, f"PROXY header longer than {_PEEK_SIZE} bytes")
            # Every byte so far belongs to the header: take them off the
            # socket, or a level-triggered poll would spin on them.
            conn.proxy_buffer += conn.raw.recv(len(peeked))
            return self._wait(conn, selectors.EVENT_READ)
        except ProxyHeaderError as e:
            return self._refuse(conn, f"bad PROXY header: {e}")
        # Consume exactly the header: the ClientHello stays in the socket.
        remaining = info.header_length - len(conn.proxy_buffer)
        while remaining > 0:  # the bytes were peeked: they are in the socket already
            chunk = conn.raw.recv(remaining)
            if not chunk:
                return self._refuse(conn, "closed inside its PROXY header")
            remaining -= len(chunk)
        conn.proxy_buffer = b""
        if info.command == "PROXY" and info.source is not None:
            conn.client = info.source
        self._start_tls(conn)
        self._step_handshake(conn)

    def _refuse_unexpected_proxy_header(self, conn: MtlsConn) -> None:
        try:
            peeked = conn.raw.recv(16, socket.MSG_PEEK)
        except BlockingIOError:
            return self._wait(conn, selectors.EVENT_READ)
        except OSError as e:
            return self._refuse(conn, describe_handshake_error(e))
        if peeked and looks_like_proxy_header(peeked):
            return self._refuse(conn, "sent a PROXY header but is not in MTLS_PROXY_ALLOW_FROM")
        if not peeked:
            return self._refuse(conn, "the client closed the connection during the handshake")
        self._start_tls(conn)
        self._step_handshake(conn)

    def _start_tls(self, conn: MtlsConn) -> None:
        assert self.tls_state is not None
        conn.sock = self.tls_state.context.wrap_socket(
            conn.raw,
            server_side=True,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=True,
        )
        conn.phase = "tls"

    def _step_handshake(self, conn: MtlsConn) -> None:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            return self._wait(conn, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            return self._wait(conn, selectors.EVENT_WRITE)
        except (ssl.SSLError, OSError) as e:
            return self._refuse(conn, describe_handshake_error(e))
        self._handshake_done(conn)

    def _wait(self, conn: MtlsConn, events: int) -> None:
        callback = partial(self._advance, conn)
        if conn.registered:
            self.poller.modify(conn.sock, events, callback)
        else:
            self.poller.register(conn.sock, events, callback)
            conn.registered = True

    def _forget(self, conn: MtlsConn) -> None:
        self.handshaking.pop(conn, None)
        if conn.registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
            conn.registered = False

    def _refuse(self, conn: MtlsConn, reason: str) -> None:
        if conn.phase in ("served", "refused"):
            return  # already handed to the pool, or already closed
        conn.phase = "refused"
        self._forget(conn)
        peer = _format_addr(conn.raw, conn.client)
        self.log.info("mTLS handshake refused: peer=%s reason=%s", peer, reason)
        self.nr_conns -= 1
        conn.close()

    def _handshake_done(self, conn: MtlsConn) -> None:
        assert self.tls_state is not None
        self._forget(conn)
        sock: ssl.SSLSocket = conn.sock
        now = datetime.datetime.now(datetime.UTC)
        der = sock.getpeercert(binary_form=True)
        try:
            cert = peer_from_der(der) if der else None
        except ValueError as e:
            # OpenSSL verified it, but cryptography cannot parse it: fail closed.
            return self._refuse(conn, f"client certificate unparseable ({e})")
        resumed = bool(sock.session_reused)
        if resumed and cert is not None:
            refusal = self.tls_state.refuse_resumed_peer(cert, now)
            if refusal:
                return self._refuse(conn, refusal)
        cipher = sock.cipher()
        conn.tls_environ = build_tls_environ(
            protocol=sock.version() or "",
            cipher=cipher[0] if cipher else "",
            sni=getattr(sock, "mtls_sni", None),
            resumed=resumed,
            peer=cert,
            now=now,
        )
        conn.peer = PeerIdentity.from_certificate(cert) if cert is not None else None
        if sock.pending():
            # The request is already decrypted in OpenSSL's buffer: the
            # socket itself may never poll readable for it.
            conn.data_ready = True
            conn.phase = "served"
            self.enqueue_req(conn)
            return
        # Wait for the first request on the poller, not in a pool thread.
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
        )
        conn.phase = "served"
        self.pending_conns.append(conn)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self.handshaking:
            conn = next(iter(self.handshaking))
            if conn.deadline > now:
                break
            assert self.tls_state is not None
            timeout = self.tls_state.settings.handshake_timeout
            what = "PROXY header" if conn.phase == "proxy" else "TLS handshake"
            self._refuse(conn, f"timeout ({what} not completed within {timeout:g}s)")
        while self.lingering:
            sock, (deadline, _read) = next(iter(self.lingering.items()))
            if deadline > now:
                break
            self._end_linger(sock)

    # -- closing ---------------------------------------------------------------

    def _linger(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, partial(self._drain, sock))
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self.lingering[sock] = (time.monotonic() + LINGER_SECONDS, 0)

    def _drain(self, sock: socket.socket, _fileobj: object = None) -> None:
        deadline, read = self.lingering.get(sock, (0.0, 0))
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        read += len(data)
        if not data or read >= LINGER_BYTES:
            self._end_linger(sock)
        else:
            self.lingering[sock] = (deadline, read)

    def _end_linger(self, sock: socket.socket) -> None:
        self.lingering.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)
        util.close(sock)

    # -- request path --------------------------------------------------------

    def handle(self, conn: MtlsConn) -> Any:
        self._local.conn = conn
        try:
            return super().handle(conn)
        finally:
            self._local.conn = None


def _format_addr(sock: socket.socket, client: Any) -> str:
    if isinstance(client, tuple) and len(client) >= 2:
        host, port = client[0], client[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return str(sock.getpeername())
    except OSError:
        return "?"
