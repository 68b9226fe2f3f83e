"""The gunicorn worker: gthread, with everything a peer can stall moved to the event loop.

Stock gunicorn 27 wraps each accepted socket in a fresh SSLContext, runs the
handshake inside a pool thread with no deadline, reads request heads in pool
threads from blocking sockets, and counts half-open connections against
``worker_connections``: a few stalled peers hold every thread, a few
thousand idle ones stop the worker accepting. No client identity reaches the
app. This worker keeps gthread's pool and event loop and changes the way in:

    accept -> PROXY header -> TLS handshake -> identify -> request head -> pool thread

Everything before "pool thread" runs non-blocking on the main thread, each
phase under its own deadline, in sets that are bounded and drop their oldest
member to admit a new one. A pool thread sees a connection only once a whole
request head is buffered, and then waits ``MTLS_IO_TIMEOUT`` at most per read
or write (request bodies, slow readers). SECURITY.md lists every bound.

Methods say which thread runs them, as gthread's do.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import errno
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from functools import partial
from typing import Any, Literal

from gunicorn import http, util
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from mtls.errors import ConfigError, ProxyHeaderError
from mtls.failures import describe_handshake_error
from mtls.identity import PEER_ENVIRON_KEY, PeerIdentity, build_tls_environ, peer_from_der
from mtls.linger import Lingerer
from mtls.proxyproto import Incomplete, looks_like_proxy_header, parse_proxy_header
from mtls.requesthead import head_limit, ready_for_thread
from mtls.serverstate import TlsState

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Where a connection is on its way to a pool thread. Each value once:
#   proxy     reading the PROXY header (peer in MTLS_PROXY_ALLOW_FROM)
#   sniff     checking that a peer NOT allowed to send a PROXY header did not
#   tls       TLS handshake in progress
#   idle      handshaken, waiting on the poller for (the rest of) a request head
#   busy      queued for, or in, a pool thread
#   closed    refused or finished; nothing may touch it again
Phase = Literal["proxy", "sniff", "tls", "idle", "busy", "closed"]

# Enough for any PROXY v1 line and a v2 header with the TLVs HAProxy sends.
_PEEK_SIZE = 16 + 1024 + 64
_RECV_SIZE = 64 * 1024
# How many of the oldest handshakes to scan for a silent one to drop first.
_EVICTION_SCAN = 64


class BoundedSSLSocket(ssl.SSLSocket):
    """An SSLSocket whose "blocking" mode waits ``io_timeout`` at most.

    gthread's ``handle()`` calls ``setblocking(True)`` before every request,
    which would wait forever on a peer that stops sending its body or stops
    reading our response. A stall surfaces as ``TimeoutError`` carrying
    ECONNRESET, which gthread logs at DEBUG like the reset it amounts to
    (and its own deadline-bounded body drain still recognises as a timeout).
    """

    io_timeout: float | None = None

    def setblocking(self, flag: bool) -> None:
        if flag and self.io_timeout is not None:
            self.settimeout(self.io_timeout)
        else:
            super().setblocking(flag)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        with self._stall_as_reset("read"):
            return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        with self._stall_as_reset("read"):
            return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        with self._stall_as_reset("write"):
            return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        with self._stall_as_reset("write"):
            super().sendall(data, flags)

    @contextlib.contextmanager
    def _stall_as_reset(self, op: str) -> Any:
        try:
            yield
        except TimeoutError:
            raise TimeoutError(
                errno.ECONNRESET, f"peer stalled: no {op} progress within {self.gettimeout()}s"
            ) from None


class MtlsConn(TConn):  # type: ignore[misc]
    """A connection on its way through the phases; only ``busy`` ones are in a thread."""

    initialized: bool
    sock: socket.socket

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.raw = sock
        self.phase: Phase = "tls"
        self.accepted_at = time.monotonic()
        # The current phase's deadline (monotonic seconds).
        self.deadline = 0.0
        # Whether the peer has sent anything yet: silent peers are dropped first.
        self.heard_from = False
        self.proxy_buffer = b""
        self.head = b""
        self.registered = False
        self.tls_environ: dict[str, str] = {}
        self.peer: PeerIdentity | None = None
        self.cert: Any = None
        self.close_after_response = False
        self.requests_served = 0
        self.linger: Lingerer | None = None

    def init(self) -> None:
        # Runs in a pool thread. The handshake and the parser were set up on
        # the main thread already (identify); nothing is left to do here.
        return

    def close(self, graceful: bool = False) -> None:
        send_close_notify(self.sock)
        if graceful and self.linger is not None:
            self.linger.close_gracefully(self.sock)
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
        # Insertion order is age order: the first entry is the oldest.
        self.handshaking: collections.OrderedDict[MtlsConn, None] = collections.OrderedDict()
        self.idle: collections.OrderedDict[MtlsConn, None] = collections.OrderedDict()
        self._local = threading.local()
        self._quitting = False
        self._head_limit = 0
        self._last_fd_warning = 0.0
        # nr_conns (gthread's) counts every connection held, so a stopping
        # worker waits for them; busy counts those queued for or in a thread.
        self.busy = 0
        self._stopping_since: float | None = None
        self.lingerer = Lingerer(lambda: self.poller)

    @property
    def state(self) -> TlsState:
        if self.tls_state is None:  # init_process refuses to start without it
            raise ConfigError("mtls.worker.MtlsWorker has no TLS state")
        return self.tls_state

    # -- start-up (main thread, once) --------------------------------------

    def init_process(self) -> None:
        if self.tls_state is None:
            raise ConfigError(
                "mtls.worker.MtlsWorker got no TLS state from the master: start gunicorn with `gunicorn -c python:mtls.gunicorn_conf yourapp:app` (or a config file that begins `from mtls.gunicorn_conf import *`), not with -k alone: its hooks build the TLS context and its certfile/keyfile make wsgi.url_scheme https"  # noqa: E501
            )
        self.tls_state.context.sslsocket_class = BoundedSSLSocket
        self._head_limit = head_limit(self.cfg)
        _raise_fd_limit()
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

    # -- accept (main thread) ------------------------------------------------

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stop accepting only for the pool's backlog, never for half-open or idle peers.

        gthread stops accepting once ``worker_connections`` are held, so 1,000
        idle sockets locked every new client out. Every phase before the pool
        is bounded on its own and drops its oldest member instead, so here
        only the connections with a whole request waiting count.
        """
        if self.alive and not enabled:
            enabled = self.busy < self.worker_connections
        super().set_accept_enabled(enabled)

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self._out_of_descriptors()
                return
            if e.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        settings = self.state.settings
        self.nr_conns += 1
        conn = MtlsConn(self.cfg, sock, addr, listener.getsockname())
        conn.linger = self.lingerer
        conn.deadline = conn.accepted_at + settings.handshake_timeout
        if len(self.handshaking) >= settings.max_handshakes:
            self._evict_handshake()
        self.handshaking[conn] = None
        if settings.proxy_protocol != "off" and isinstance(addr, tuple):
            conn.phase = "proxy" if settings.proxy_allowed(addr[0]) else "sniff"
        else:
            conn.phase = "tls"
        self._advance(conn)

    def _advance(self, conn: MtlsConn, _fileobj: object = None) -> None:
        """One step of a connection before the pool; any failure refuses it, never the worker.

        A peer can reset at any moment (even before wrap_socket's
        getpeername), and nothing it does may raise into gunicorn's loop,
        which would kill the worker and every connection it holds.
        """
        try:
            if conn.phase == "proxy":
                self._read_proxy_header(conn)
            elif conn.phase == "sniff":
                self._refuse_unexpected_proxy_header(conn)
            elif conn.phase == "tls":
                if conn.sock is conn.raw:
                    self._start_tls(conn)
                self._step_handshake(conn)
            elif conn.phase == "idle":
                self._read_head(conn)
        except OSError as e:
            self._refuse(conn, describe_handshake_error(e))
        except Exception as e:
            self.log.exception("unexpected error on the mTLS accept path")
            self._refuse(conn, f"internal error ({type(e).__name__}); refused")

    # -- PROXY header (main thread) ------------------------------------------

    def _read_proxy_header(self, conn: MtlsConn) -> None:
        try:
            peeked = conn.raw.recv(_PEEK_SIZE, socket.MSG_PEEK)
        except BlockingIOError:
            return self._wait(conn, selectors.EVENT_READ)
        if not peeked:
            return self._refuse(conn, "closed before sending its PROXY header")
        conn.heard_from = True
        data = conn.proxy_buffer + peeked
        mode = self.state.settings.proxy_protocol
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
        if not peeked:
            return self._refuse(conn, "the client closed the connection during the handshake")
        conn.heard_from = True
        if looks_like_proxy_header(peeked):
            return self._refuse(conn, "sent a PROXY header but is not in MTLS_PROXY_ALLOW_FROM")
        self._start_tls(conn)
        self._step_handshake(conn)

    # -- TLS handshake (main thread) ------------------------------------------

    def _start_tls(self, conn: MtlsConn) -> None:
        conn.sock = self.state.context.wrap_socket(
            conn.raw,
            server_side=True,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=True,
        )
        conn.phase = "tls"

    def _step_handshake(self, conn: MtlsConn) -> None:
        try:
            conn.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            return self._wait(conn, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            conn.heard_from = True
            return self._wait(conn, selectors.EVENT_WRITE)
        except (ssl.SSLError, OSError) as e:
            return self._refuse(conn, describe_handshake_error(e))
        self._identify(conn)

    # -- identify (main thread, once per connection) -------------------------

    def _identify(self, conn: MtlsConn) -> None:
        """Turn the verified handshake into the environ every request of the connection gets."""
        self.handshaking.pop(conn, None)
        sock = conn.sock
        assert isinstance(sock, BoundedSSLSocket)
        now = datetime.datetime.now(datetime.UTC)
        der = sock.getpeercert(binary_form=True)
        try:
            cert = peer_from_der(der) if der else None
        except ValueError as e:
            # OpenSSL verified it, but cryptography cannot parse it: fail closed.
            return self._refuse(conn, f"client certificate unparseable ({e})")
        resumed = bool(sock.session_reused)
        if resumed and cert is not None:
            refusal = self.state.refuse_peer(cert, now, what="resumed session")
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
        conn.cert = cert
        conn.peer = PeerIdentity.from_certificate(cert) if cert is not None else None
        sock.io_timeout = self.state.settings.io_timeout
        conn.parser = http.get_parser(self.cfg, sock, conn.client)
        conn.initialized = True
        self._await_request(conn)

    # -- request head (main thread) -------------------------------------------

    def _await_request(self, conn: MtlsConn) -> None:
        """Park the connection until a request is ready for a thread (mtls.requesthead).

        Up to gunicorn's ``keepalive`` for the first byte, then
        MTLS_REQUEST_TIMEOUT for the rest; bytes the previous request's body
        drain read ahead count as the start of the next head.
        """
        conn.phase = "idle"
        conn.head = conn.parser.unreader.take_buffered()
        conn.deadline = time.monotonic() + (
            self.state.settings.request_timeout if conn.head else self.cfg.keepalive
        )
        if len(self.idle) >= self.worker_connections:
            self._evict_idle()
        self.idle[conn] = None
        self._read_head(conn)

    def _read_head(self, conn: MtlsConn) -> None:
        sock = conn.sock
        while not ready_for_thread(conn.head) and len(conn.head) < self._head_limit:
            try:
                chunk = sock.recv(_RECV_SIZE)
            except ssl.SSLWantReadError:
                return self._wait(conn, selectors.EVENT_READ)
            except ssl.SSLWantWriteError:
                return self._wait(conn, selectors.EVENT_WRITE)
            except (ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                # The peer closed (or broke) the connection between requests:
                # the normal end of keep-alive, not a refusal worth a log line.
                return self._close_idle(conn)
            if not conn.head:
                conn.deadline = time.monotonic() + self.state.settings.request_timeout
            conn.head += chunk
        # A head over the limit goes to the parser too: gunicorn answers it
        # with its own 400/431 without reading further.
        self._hand_over(conn)

    def _hand_over(self, conn: MtlsConn) -> None:
        self.idle.pop(conn, None)
        self._unregister(conn)
        now = datetime.datetime.now(datetime.UTC)
        if conn.cert is not None:
            refusal = self.state.refuse_peer(conn.cert, now, what="kept-alive connection")
            if refusal:
                return self._refuse(conn, refusal)
        age = time.monotonic() - conn.accepted_at
        conn.close_after_response = age >= self.state.settings.max_connection_age
        conn.parser.unreader.unread(conn.head)
        conn.head = b""
        conn.data_ready = True
        conn.phase = "busy"
        self.busy += 1
        self.enqueue_req(conn)

    # -- the poller's bookkeeping (main thread) -------------------------------

    def _wait(self, conn: MtlsConn, events: int) -> None:
        callback = partial(self._advance, conn)
        if conn.registered:
            self.poller.modify(conn.sock, events, callback)
        else:
            self.poller.register(conn.sock, events, callback)
            conn.registered = True

    def _unregister(self, conn: MtlsConn) -> None:
        if conn.registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
            conn.registered = False

    def _refuse(self, conn: MtlsConn, reason: str) -> None:
        if conn.phase in ("busy", "closed"):
            return  # in a pool thread, or already closed
        self.handshaking.pop(conn, None)
        self.idle.pop(conn, None)
        self._unregister(conn)
        # Before the handshake completes it is a refused handshake; after it,
        # a closed connection (a re-check or a head that never came whole).
        what = "connection closed" if conn.phase == "idle" else "handshake refused"
        conn.phase = "closed"
        self.nr_conns -= 1
        peer = _format_addr(conn.raw, conn.client)
        self.log.info("mTLS %s: peer=%s reason=%s", what, peer, reason)
        conn.close()

    def _close_idle(self, conn: MtlsConn) -> None:
        if conn.phase == "closed":
            return
        self.idle.pop(conn, None)
        self._unregister(conn)
        conn.phase = "closed"
        self.nr_conns -= 1
        conn.close()

    def _evict_handshake(self) -> None:
        """Make room for a new connection: the oldest silent handshake goes first."""
        oldest = list(self.handshaking)[:_EVICTION_SCAN]
        victim = next((c for c in oldest if not c.heard_from), oldest[0])
        limit = self.state.settings.max_handshakes
        self._refuse(victim, f"dropped: {limit} handshakes in progress (MTLS_MAX_HANDSHAKES)")

    def _evict_idle(self) -> None:
        """Make room: the oldest connection waiting for a request goes first (as nginx does)."""
        oldest = list(self.idle)[:_EVICTION_SCAN]
        victim = next((c for c in oldest if not c.head), oldest[0])
        if victim.head:
            self._refuse(victim, "dropped inside its request head: too many idle connections")
        else:
            self._close_idle(victim)

    def _out_of_descriptors(self) -> None:
        """EMFILE on accept: drop the oldest waiting connection instead of dying."""
        now = time.monotonic()
        if now - self._last_fd_warning > 1.0:
            self._last_fd_warning = now
            self.log.warning(
                "out of file descriptors (%d handshaking, %d idle): dropping the oldest; "
                "raise the limit (systemd LimitNOFILE=) or lower MTLS_MAX_HANDSHAKES",
                len(self.handshaking),
                len(self.idle),
            )
        if self.handshaking:
            self._evict_handshake()
        elif self.idle:
            self._evict_idle()

    def murder_pending(self) -> None:
        """Once a second: close whatever is past its phase's deadline."""
        super().murder_pending()
        now = time.monotonic()
        settings = self.state.settings
        while self.handshaking:
            conn = next(iter(self.handshaking))
            if conn.deadline > now:
                break
            what = "PROXY header" if conn.phase == "proxy" else "TLS handshake"
            timeout = settings.handshake_timeout
            self._refuse(conn, f"timeout ({what} not completed within {timeout:g}s)")
        if not self.alive and self._stopping_since is None:
            self._stopping_since = now
        # Deadlines differ (keep-alive wait vs. head in progress): scan them all.
        for conn in list(self.idle):
            if self._stopping_since is not None and conn.requests_served and not conn.head:
                # As gthread: a stopping worker keeps kept-alive connections
                # briefly, for a request a client may be sending already.
                conn.deadline = min(conn.deadline, self._stopping_since + STOP_KEEPALIVE_LINGER)
            if conn.deadline > now:
                continue
            if conn.head:
                timeout = settings.request_timeout
                self._refuse(conn, f"timeout (request not complete within {timeout:g}s)")
            else:
                self._close_idle(conn)
        self.lingerer.expire(now)

    def murder_keepalived(self, force: bool = False) -> None:
        super().murder_keepalived(force)
        if force:
            for conn in list(self.handshaking) + list(self.idle):
                self.handshaking.pop(conn, None)
                self._close_idle(conn)
            self.lingerer.close_all()

    # -- back from the pool (main thread) -------------------------------------

    def finish_request(self, conn: MtlsConn, fs: futures.Future[Any]) -> None:
        """A pool thread is done with the connection: keep it alive on the poller, or close."""
        self.busy -= 1
        conn.requests_served += 1
        try:
            keep = bool(fs.result()) if not fs.cancelled() else False
        except Exception:
            keep = False
        if keep and not conn.close_after_response:
            try:
                conn.sock.setblocking(False)
                self._await_request(conn)
            except Exception:
                self.log.exception("unexpected error putting a connection back on the poller")
                self._close_idle(conn)
            return
        conn.phase = "closed"
        self.nr_conns -= 1
        conn.close(graceful=keep)

    # -- request path (pool thread) -------------------------------------------

    def handle(self, conn: MtlsConn) -> Any:
        self._local.conn = conn
        try:
            return super().handle(conn)
        finally:
            self._local.conn = None

    def handle_request(self, req: Any, conn: MtlsConn) -> Any:
        if conn.close_after_response:
            # MTLS_MAX_CONNECTION_AGE: this response says "Connection: close".
            req.must_close = True
        return super().handle_request(req, conn)


def _raise_fd_limit() -> None:
    """Use the hard descriptor limit: every idle peer costs one (nginx: worker_rlimit_nofile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _format_addr(sock: socket.socket, client: Any) -> str:
    if isinstance(client, tuple) and len(client) >= 2:
        host, port = client[0], client[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return str(sock.getpeername())
    except OSError:
        return "?"
