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
from typing import Any

from gunicorn import http
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, ThreadWorker

from mtls.admission import WaitingSet
from mtls.balance import PAUSE, AcceptGate, ConnectionTable
from mtls.errors import ConfigError, MtlsError
from mtls.failures import Refusal, describe_handshake_error, parse_certificate_message
from mtls.health import RELOADS_ENVIRON_KEY, STATE_ENVIRON_KEY
from mtls.identity import PEER_ENVIRON_KEY, connection_environ, format_serial
from mtls.identitycache import IdentityCache
from mtls.linger import Lingerer
from mtls.metrics import NO_METRICS, Metrics, worker_metrics
from mtls.proxyphase import ProxyHeaderReader, Refuse, Step, Wait, refuse_unexpected_header
from mtls.reloadstatus import ReloadStatus
from mtls.requesthead import BUFFERED_BODY, MAX_PIECES, RequestBuffer, head_limit
from mtls.serverconn import BoundedSSLSocket, MtlsConn, format_addr
from mtls.serverstate import FileSet, TlsState, load_tls_state, needs_new_workers
from mtls.statechannel import StateChannel
from mtls.tls import ListenerContexts

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_RECV_SIZE = 64 * 1024
# Past this many bytes buffered in a worker, a connection whose buffered
# request outgrows a small body is refused (SECURITY.md: limits).
BUFFER_BUDGET = 64 * 1024 * 1024


class MtlsWorker(ThreadWorker):  # type: ignore[misc]
    """gthread worker that enforces mTLS at accept time and exposes the identity."""

    wsgi: WSGIApp

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Handed over by the master in the pre_fork hook (mtls.hooks): the
        # state built and validated before the fork, the listener context
        # every socket is wrapped in (one session-ticket key for all workers),
        # and the channel later states arrive on (mtls.statechannel).
        self.tls_state: TlsState | None = None
        self.listener: ListenerContexts | None = None
        self.channel: StateChannel | None = None
        self.generation = 0
        # Also from pre_fork: this worker's slot in the table that spreads
        # kept-alive connections over the workers (mtls.balance); None: it
        # accepts whenever it can, as gthread does.
        self.balance: ConnectionTable | None = None
        self.balance_slot: int | None = None
        self._gate: AcceptGate | None = None
        # Connections in PROXY/TLS, and handshaken ones waiting for a request:
        # bounded, dropping their oldest (mtls.admission); sized in init_process.
        self.handshaking: WaitingSet[MtlsConn] = WaitingSet(1, worth=_handshake_worth)
        self.idle: WaitingSet[MtlsConn] = WaitingSet(1, worth=_idle_worth)
        self._local = threading.local()
        self._quitting = False
        self._head_limit = 0
        self._last_fd_warning = 0.0
        # nr_conns (gthread's) counts every connection held, so a stopping
        # worker waits for them; busy counts those queued for or in a thread.
        self.busy = 0
        self._stopping_since: float | None = None
        # Bytes of request heads (and small bodies) buffered on the event loop.
        self._buffered = 0
        # Whether _follow_reloads ran since murder_pending last did (once a turn).
        self._reloads_followed = False
        # No idle connection's deadline is earlier than this (_idle_deadline).
        self._idle_due = float("inf")
        self._accept_paused_until = 0.0
        self.lingerer = Lingerer(lambda: self.poller)
        # Each client certificate parsed once, not once per connection (mtls.identitycache).
        self.identities = IdentityCache()
        self.metrics: Metrics = NO_METRICS
        # Handed over with the state (pre_fork): the master's last reload, for /healthz.
        self.reload_status: ReloadStatus | None = None

    @property
    def state(self) -> TlsState:
        if self.tls_state is None:  # init_process refuses to start without it
            raise ConfigError("mtls.worker.MtlsWorker has no TLS state")
        return self.tls_state

    @property
    def contexts(self) -> ListenerContexts:
        if self.listener is None:  # init_process refuses to start without it
            raise ConfigError("mtls.worker.MtlsWorker has no listener context")
        return self.listener

    # -- start-up (main thread, once) --------------------------------------

    def init_process(self) -> None:
        if self.tls_state is None or self.listener is None:
            raise ConfigError(
                "mtls.worker.MtlsWorker got no TLS state from the master: start gunicorn with `gunicorn -c python:mtls.gunicorn_conf yourapp:app` (or a config file that begins `from mtls.gunicorn_conf import *`), not with -k alone: its hooks build the TLS context and its certfile/keyfile make wsgi.url_scheme https"  # noqa: E501
            )
        self.listener.session.sslsocket_class = BoundedSSLSocket
        self.handshaking.limit = self.tls_state.settings.max_handshakes
        self.idle.limit = self.worker_connections
        self._head_limit = head_limit(self.cfg)
        _raise_fd_limit()
        self.metrics = worker_metrics()  # after the fork: prometheus_client files are per process
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = self._with_identity(self.wsgi)

    def _with_identity(self, app: WSGIApp) -> WSGIApp:
        local = self._local
        reloads = self.reload_status

        def mtls_identity(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            conn: MtlsConn = local.conn
            environ.update(conn.tls_environ)
            environ[PEER_ENVIRON_KEY] = conn.peer
            # For the app's /healthz (mtls.health.from_environ): the state
            # in use now, which a reload swaps (_follow_reloads).
            environ[STATE_ENVIRON_KEY] = self.tls_state
            environ[RELOADS_ENVIRON_KEY] = reloads
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

    def run(self) -> None:
        if self.balance is not None and self.balance_slot is not None:
            # Joined only now, with the app loaded: a worker still importing
            # it must not be handed connections it cannot take yet.
            self._gate = AcceptGate(self.balance, self.balance_slot)
            self._gate.join(self.pid, self.nr_conns)
        try:
            super().run()
        finally:
            self._leave_balance()

    def _leave_balance(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.leave()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's, plus two rules about time.

        A listener taken off the poller for a moment (balance, EMFILE) goes
        back on when the moment ends, not at the next 1 s turn. And a set
        the master published while this loop slept applies to whatever woke
        it: an idle worker would otherwise hand the connection that woke it
        the replaced certificate, up to a second after the master's
        "reloaded in place" line (seen as one old serial among new ones).
        """
        paused = self._accept_paused_until - time.monotonic()
        if paused > 0:
            timeout = min(timeout, paused)
        try:
            events = self.poller.select(timeout)
            if events:
                self._follow_reloads()
            for key, _ in events:
                key.data(key.fileobj)
            if self._gate is not None:  # for the others' choice (mtls.balance)
                self._gate.handshaking(len(self.handshaking))
        except OSError as e:
            if e.errno != errno.EINTR:
                raise

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stop accepting only for the pool's backlog, never for half-open or idle peers.

        gthread stops accepting once ``worker_connections`` are held, so 1,000
        idle sockets locked every new client out. Every phase before the pool
        is bounded on its own and drops its oldest member instead, so here
        only the connections with a whole request waiting count.
        """
        if self.alive and not enabled:
            enabled = self.busy < self.worker_connections
        if not self.alive:
            self._leave_balance()  # stopping: the other workers take the new connections
        if time.monotonic() < self._accept_paused_until:
            enabled = False
        super().set_accept_enabled(enabled)

    def accept(self, listener: socket.socket) -> None:
        gate = self._gate
        if gate is not None and not gate.should_accept(
            self.nr_conns, time.monotonic(), len(self.handshaking)
        ):
            # Another worker holds fewer connections and is accepting: it
            # takes this one (mtls.balance). Off the poller for a moment, so a
            # listener that stays readable does not spin this loop.
            self._accept_paused_until = time.monotonic() + PAUSE
            gate.pause(self._accept_paused_until)
            super().set_accept_enabled(False)
            return
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
        if gate is not None:
            gate.accepted()
        self._held(+1)
        conn = MtlsConn(self.cfg, sock, addr, listener.getsockname())
        conn.linger = self.lingerer
        conn.deadline = conn.accepted_at + settings.handshake_timeout
        dropped = self.handshaking.add(conn)
        if dropped is not None:
            limit = settings.max_handshakes
            why = f"dropped: {limit} handshakes in progress (MTLS_MAX_HANDSHAKES)"
            self._refuse(dropped, Refusal("other", why))
        mode = settings.proxy_protocol
        if mode != "off" and isinstance(addr, tuple):
            if settings.proxy_allowed(addr[0]):
                conn.phase = "proxy"
                conn.proxy_reader = ProxyHeaderReader(mode)
            else:
                conn.phase = "sniff"
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
                # Peeked on the bare socket first: a peer that has sent
                # nothing gets no TLS object (_start_tls says what it costs).
                if conn.heard_from or self._has_sent_something(conn):
                    if conn.sock is conn.raw:
                        self._start_tls(conn)
                    self._step_handshake(conn)
            elif conn.phase == "idle":
                self._read_head(conn)
        except OSError as e:
            self._refuse(conn, self._diagnose(conn, e))
        except Exception as e:
            self.log.exception("unexpected error on the mTLS accept path")
            self._refuse(conn, Refusal("other", f"internal error ({type(e).__name__})"))

    # -- PROXY header (main thread) ------------------------------------------

    def _read_proxy_header(self, conn: MtlsConn) -> None:
        reader = conn.proxy_reader  # set by accept() with the "proxy" phase
        step = reader.step(conn.raw) if reader else Refuse("internal error: no PROXY reader")
        self._after_proxy_step(conn, step)

    def _refuse_unexpected_proxy_header(self, conn: MtlsConn) -> None:
        self._after_proxy_step(conn, refuse_unexpected_header(conn.raw))

    def _after_proxy_step(self, conn: MtlsConn, step: Step) -> None:
        if isinstance(step, Wait):
            return self._wait(conn, selectors.EVENT_READ)
        conn.heard_from = True
        if isinstance(step, Refuse):
            return self._refuse(conn, Refusal("proxy_header", step.reason))
        if step.client is not None:
            conn.client = step.client
        self._start_tls(conn)
        self._step_handshake(conn)

    # -- TLS handshake (main thread) ------------------------------------------

    def _start_tls(self, conn: MtlsConn) -> None:
        """Wrap the socket once the peer has sent something (its ClientHello, as a rule).

        A wrapped socket costs ~9 KiB (OpenSSL's SSL object, 8.4 KiB, and
        ssl.py's), and glibc keeps what it frees: 1,000 silent peers (one
        full MTLS_MAX_HANDSHAKES) left a worker ~9 MiB larger for good when
        each was wrapped at accept. Unwrapped, a silent peer costs ~1 KiB.
        The bare socket is taken off the poller first: wrap_socket detaches
        it, and the poller must hold the socket that is read from now on.
        """
        self._unregister(conn)
        # The listener context; its SNI callback moves the handshake to the
        # current state's context (mtls.tls.ListenerContexts).
        conn.sock = self.contexts.session.wrap_socket(
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
            return self._refuse(conn, self._diagnose(conn, e))
        self._identify(conn)

    def _has_sent_something(self, conn: MtlsConn) -> bool:
        """Before OpenSSL reads: a peer that connects and closes is a probe, not a refusal.

        A load balancer's TCP check does exactly that, every few seconds; it is
        counted as reason="probe" and logged at DEBUG. One peek per connection.
        """
        try:
            peeked = socket.socket.recv(conn.sock, 1, socket.MSG_PEEK)
        except BlockingIOError:
            self._wait(conn, selectors.EVENT_READ)
            return False
        if not peeked:
            self._refuse(conn, Refusal("probe", "connected and closed without a ClientHello"))
            return False
        conn.heard_from = True
        return True

    def _diagnose(self, conn: MtlsConn, error: BaseException) -> Refusal:
        captured = getattr(conn.sock, "mtls_peer_certificates", None)
        chain = parse_certificate_message(*captured) if captured else []
        return describe_handshake_error(error, chain, self.state.known_issuers)

    # -- identify (main thread, once per connection) -------------------------

    def _identify(self, conn: MtlsConn) -> None:
        """Turn the verified handshake into the environ every request of the connection gets."""
        self.handshaking.discard(conn)
        sock = conn.sock
        if not isinstance(sock, BoundedSSLSocket):  # the context was not set up by init_process
            return self._refuse(conn, Refusal("other", "internal error: not a worker TLS socket"))
        now = datetime.datetime.now(datetime.UTC)
        der = sock.getpeercert(binary_form=True)
        try:
            known = self.identities.peer(der) if der else None
        except ValueError as e:
            # OpenSSL verified it, but cryptography cannot parse it: fail closed.
            return self._refuse(conn, Refusal("other", f"client certificate unparseable ({e})"))
        cert = known.cert if known is not None else None
        # The captured Certificate message served the refusal's diagnosis only.
        with contextlib.suppress(AttributeError):
            delattr(sock, "mtls_peer_certificates")
        resumed = bool(sock.session_reused)
        if resumed and cert is not None:
            refusal = self.state.refuse_peer(cert, now, what="resumed session")
            if refusal:
                return self._refuse(conn, refusal)
        self.metrics.handshake("accepted", "none", time.monotonic() - conn.accepted_at)
        if resumed:
            self.metrics.resumed()
        # Which certificate this connection was served: a later swap ends it
        # after its next response (_hand_over). A context other than the
        # current one means a swap during this handshake: treat it as older.
        current = sock.context is self.state.context
        conn.server_serial = self.state.leaf_serial if current else None
        cipher = sock.cipher()
        conn.tls_environ = connection_environ(
            protocol=sock.version() or "",
            cipher=cipher[0] if cipher else "",
            sni=getattr(sock, "mtls_sni", None),
            resumed=resumed,
            peer=cert,
            certificate=known.environ if known is not None else None,
            now=now,
        )
        conn.cert = cert
        if cert is not None:  # re-checked on every request (_hand_over): read once
            conn.cert_serial = cert.serial_number
            conn.cert_not_after = cert.not_valid_after_utc
        conn.peer = known.identity if known is not None else None
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
        conn.head = RequestBuffer(conn.parser.unreader.take_buffered())
        self._buffered += len(conn.head)
        self._idle_deadline(
            conn,
            time.monotonic()
            + (self.state.settings.request_timeout if conn.head else self.cfg.keepalive),
        )
        dropped = self.idle.add(conn)
        if dropped is not None:
            self._drop_idle(dropped)
        if conn.requests_served and not conn.head and not _has_pending(conn.sock):
            # Kept alive: the client waits for our response before it sends
            # the next request (no pipelining), so a read now would only
            # fail (~3 us: SSL_read, EAGAIN, SSLWantReadError). Wait for
            # the socket instead; bytes OpenSSL decrypted already are not
            # signalled by the poller, hence the pending() check.
            return self._wait(conn, selectors.EVENT_READ)
        self._read_head(conn)

    def _read_head(self, conn: MtlsConn) -> None:
        sock = conn.sock
        while not conn.head.ready and len(conn.head) < self._head_limit:
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
                self._idle_deadline(conn, time.monotonic() + self.state.settings.request_timeout)
            conn.head.feed(chunk)
            self._buffered += len(chunk)
            if conn.head.pieces > MAX_PIECES:
                why = f"request sent in more than {MAX_PIECES} pieces (1-byte TLS records?)"
                return self._refuse(conn, Refusal("other", why))
            if self._buffered > BUFFER_BUDGET and len(conn.head) > BUFFERED_BODY:
                why = f"more than {BUFFER_BUDGET >> 20} MiB of requests buffered in this worker"
                return self._refuse(conn, Refusal("other", why))
        # A head over the limit goes to the parser too: gunicorn answers it
        # with its own 400/431 without reading further.
        self._hand_over(conn)

    def _idle_deadline(self, conn: MtlsConn, when: float) -> None:
        """Set an idle connection's deadline; the scan in murder_pending is due by then."""
        conn.deadline = when
        if when < self._idle_due:
            self._idle_due = when

    def _hand_over(self, conn: MtlsConn) -> None:
        self.idle.discard(conn)
        self._unregister(conn)
        now = datetime.datetime.now(datetime.UTC)
        if conn.cert is not None:
            refusal = self.state.refuse_known(
                conn.cert_serial, conn.cert_not_after, now, what="kept-alive connection"
            )
            if refusal:
                return self._refuse(conn, refusal)
        age = time.monotonic() - conn.accepted_at
        # Past MTLS_MAX_CONNECTION_AGE, or served a certificate that has been
        # replaced since: this response says "Connection: close", so no
        # connection outlives the certificate it was opened with.
        conn.close_after_response = (
            age >= self.state.settings.max_connection_age
            or conn.server_serial != self.state.leaf_serial
        )
        self._buffered -= len(conn.head)
        conn.parser.unreader.unread(conn.head.take())
        if isinstance(conn.sock, BoundedSSLSocket):
            conn.sock.read_deadline = time.monotonic() + self.state.settings.body_timeout
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

    def _held(self, delta: int) -> None:
        self.nr_conns += delta
        self.metrics.connections(delta)
        if self._gate is not None:
            self._gate.held(self.nr_conns)

    def _refuse(self, conn: MtlsConn, refusal: Refusal) -> None:
        if conn.phase in ("busy", "closed"):
            return  # in a pool thread, or already closed
        self.handshaking.discard(conn)
        self.idle.discard(conn)
        self._unregister(conn)
        self._release_buffer(conn)
        # Before the handshake completes it is a refused handshake; after it,
        # a closed connection (a re-check or a head that never came whole).
        handshake = conn.phase != "idle"
        if handshake:
            self.metrics.handshake("refused", refusal.reason)
        # Our alert must reach a TLS 1.3 client that already wrote (mtls.linger);
        # a connection dropped to make room must give its descriptor back now.
        alerted = conn.phase == "tls" and refusal.reason not in ("probe", "timeout")
        alerted = alerted and not refusal.detail.startswith("dropped")
        conn.phase = "closed"
        self._held(-1)
        what = "handshake refused" if handshake else "connection closed"
        peer = format_addr(conn.raw, conn.client)
        self.log.log(refusal.level, "mTLS %s: peer=%s reason=%s", what, peer, refusal)
        conn.close(graceful=alerted)

    def _close_idle(self, conn: MtlsConn) -> None:
        if conn.phase == "closed":
            return
        self.idle.discard(conn)
        self._unregister(conn)
        self._release_buffer(conn)
        conn.phase = "closed"
        self._held(-1)
        conn.close()

    def _release_buffer(self, conn: MtlsConn) -> None:
        if conn.phase == "idle":
            self._buffered -= len(conn.head)
            conn.head = RequestBuffer()

    def _drop_idle(self, conn: MtlsConn) -> None:
        if conn.head:
            self._refuse(conn, Refusal("other", "dropped mid-request: too many idle connections"))
        else:
            self._close_idle(conn)

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
        self.lingerer.drop_oldest()  # a descriptor back at once, if one is draining
        victim = self.handshaking.victim() or self.idle.victim()
        if victim is not None and victim in self.handshaking:
            self._refuse(victim, Refusal("other", "dropped: out of file descriptors"))
        elif victim is not None:
            self._drop_idle(victim)
        else:
            # Every descriptor is in a request: stop accepting for a moment
            # instead of spinning on a listener that stays readable.
            self._accept_paused_until = now + 0.2
            super().set_accept_enabled(False)

    # -- reloads (main thread) -------------------------------------------------

    def _follow_reloads(self) -> None:
        """Swap in the state the master published since (mtls.statechannel), if it validates.

        Built from the master's bytes, validated again here (a few ms on the
        event loop, once per rotation). New handshakes get it at their
        ClientHello; requests on open connections are judged against it
        (revocation, a stale CRL) at once; a connection served the old
        certificate closes after its next response. A set this worker
        refuses (it should not: the master accepted the same bytes) keeps
        the old state, with an error in the log.
        """
        self._reloads_followed = True
        channel = self.channel
        if channel is None or channel.generation == self.generation:
            return
        published = channel.read()
        if published is None:
            return  # being written right now: the next second
        generation, files = published
        old = self.state
        try:
            new = load_tls_state(
                old.settings, previous=old, files=FileSet.from_ordered(old.settings, files)
            )
        except OSError as e:
            # Out of descriptors (EMFILE: the in-memory files OpenSSL loads
            # from), say: not the set's fault. Raised from murder_pending it
            # would end the worker and every connection it holds; the next
            # turn tries the same generation again.
            self.log.warning(
                "mTLS worker %s: the reloaded TLS files (generation %d) cannot be loaded "
                "yet (%s); keeping the previous ones and trying again",
                self.pid,
                generation,
                e.strerror or e,
            )
            return
        except (MtlsError, ValueError) as e:
            self.generation = generation
            self.log.error(
                "mTLS worker %s: the reloaded TLS files (generation %d) were refused here, "
                "keeping the previous ones: %s",
                self.pid,
                self.generation,
                " | ".join(line.strip() for line in str(e).splitlines()),
            )
            return
        self.generation = generation
        if new.fingerprint == old.fingerprint:
            return
        why = needs_new_workers(old, new)
        if why is not None:  # the master decides this too; never swap one in place
            self.log.error(
                "mTLS worker %s: not swapping in generation %d: %s", self.pid, generation, why
            )
            return
        self.tls_state = new
        self.contexts.current = new.context
        self.log.info(
            "mTLS worker %s: new connections get cert serial %s (%s, until %s), generation %d",
            self.pid,
            format_serial(new.leaf.serial_number),
            new.subject_dn,
            f"{new.leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
            self.generation,
        )

    def murder_pending(self) -> None:
        """Every turn of the event loop (once a second at least): reloads, deadlines.

        Reloads are followed here unless this turn's dispatch did already
        (an event woke the loop: wait_for_and_dispatch_events), microseconds
        ago: a second look at the channel cost ~1.3 us a request.
        """
        if not self._reloads_followed:
            self._follow_reloads()
        self._reloads_followed = False
        super().murder_pending()
        now = time.monotonic()
        settings = self.state.settings
        for conn in self.handshaking.expired(now):
            what = "PROXY header" if conn.phase == "proxy" else "TLS handshake"
            timeout = settings.handshake_timeout
            self._refuse(conn, Refusal("timeout", f"{what} not completed within {timeout:g}s"))
        if not self.alive and self._stopping_since is None:
            self._stopping_since = now
        if self._stopping_since is not None or now >= self._idle_due:
            self._expire_idle(now)
        self.lingerer.expire(now)

    def _expire_idle(self, now: float) -> None:
        """Close the idle connections whose deadline passed; the scan is due again at the next.

        Deadlines differ (keep-alive wait vs. head in progress), so every
        member is looked at; murder_pending calls this only once the earliest
        deadline set since the last scan (_idle_deadline) can have passed:
        scanning the kept-alive connections on every turn of the loop, one
        turn per request, cost ~4 us a request (bench/findings.py).
        """
        settings = self.state.settings
        due = float("inf")
        for conn in self.idle:
            if self._stopping_since is not None and conn.requests_served and not conn.head:
                # As gthread: a stopping worker keeps kept-alive connections
                # briefly, for a request a client may be sending already.
                conn.deadline = min(conn.deadline, self._stopping_since + STOP_KEEPALIVE_LINGER)
            if conn.deadline > now:
                due = min(due, conn.deadline)
                continue
            if conn.head:
                timeout = settings.request_timeout
                why = f"request not complete within {timeout:g}s"
                self._refuse(conn, Refusal("timeout", why))
            else:
                self._close_idle(conn)
        self._idle_due = due

    def murder_keepalived(self, force: bool = False) -> None:
        super().murder_keepalived(force)
        if force:
            for conn in [*self.handshaking, *self.idle]:
                self.handshaking.discard(conn)
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
        self._held(-1)
        conn.close(graceful=keep)

    # -- request path (pool thread) -------------------------------------------

    def handle(self, conn: MtlsConn) -> Any:
        self._local.conn = conn
        try:
            return super().handle(conn)
        finally:
            self._local.conn = None

    def handle_request(self, req: Any, conn: MtlsConn) -> Any:
        """gthread's, with the response head held for its body's first write (mtls.responsehead).

        One TLS record and one syscall instead of two for a small response;
        whatever is still held when the response is done goes out here.
        Never for HEAD: its response has no body to wait for.
        """
        if conn.close_after_response:
            # MTLS_MAX_CONNECTION_AGE: this response says "Connection: close".
            req.must_close = True
        sock = conn.sock
        if not isinstance(sock, BoundedSSLSocket) or req.method == "HEAD":
            return super().handle_request(req, conn)
        sock.hold_head = True
        try:
            return super().handle_request(req, conn)
        finally:
            sock.hold_head = False
            sock.release_held()


def _handshake_worth(conn: MtlsConn) -> int:
    return 1 if conn.heard_from else 0  # silent peers go first


def _idle_worth(conn: MtlsConn) -> int:
    """Fresh and silent 0, a request begun 1, a client served before 2 (more if mid-request)."""
    return (2 if conn.requests_served else 0) + (1 if conn.head else 0)


def _has_pending(sock: socket.socket) -> bool:
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def _raise_fd_limit() -> None:
    """Use the hard descriptor limit: every idle peer costs one (nginx: worker_rlimit_nofile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
