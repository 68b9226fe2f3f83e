"""One server-side connection on its way through the worker, and the TLS socket it ends up on.

mtls.worker moves connections through the phases below on its event loop;
this module holds what a connection carries between them and the socket
class whose "blocking" mode is bounded, so a pool thread never waits on a
peer for ever.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import socket
import ssl
import time
from typing import Any, Literal

from gunicorn import util
from gunicorn.workers.gthread import TConn

from mtls.identity import PeerIdentity
from mtls.linger import Lingerer
from mtls.proxyphase import ProxyHeaderReader
from mtls.requesthead import RequestBuffer
from mtls.responsehead import MAX_JOINED_BODY, may_wait_for_body

# Where a connection is on its way to a pool thread. Each value once:
#   proxy     reading the PROXY header (peer in MTLS_PROXY_ALLOW_FROM)
#   sniff     checking that a peer NOT allowed to send a PROXY header did not
#   tls       TLS handshake in progress
#   idle      handshaken, waiting on the poller for (the rest of) a request head
#   busy      queued for, or in, a pool thread
#   closed    refused or finished; nothing may touch it again
Phase = Literal["proxy", "sniff", "tls", "idle", "busy", "closed"]


class BoundedSSLSocket(ssl.SSLSocket):
    """An SSLSocket whose "blocking" mode waits ``io_timeout`` at most, and writes a head once.

    gthread's ``handle()`` calls ``setblocking(True)`` before every request,
    which would wait forever on a peer that stops sending its body or stops
    reading our response. A stall surfaces as ``TimeoutError`` carrying
    ECONNRESET, which gthread logs at DEBUG like the reset it amounts to
    (and its own deadline-bounded body drain still recognises as a timeout).

    With ``hold_head`` set (by the worker, for one response), a response
    head that mtls.responsehead says may wait is kept and sent with the
    next write, in one TLS record; ``release_held`` sends whatever is still
    held, and any other write or a shutdown sends it first.

    These methods run for every request: plain try/except, no context
    manager (~1 us each, six of them per request).
    """

    io_timeout: float | None = None
    # Monotonic time by which the request being read must be whole: a body
    # dripped a byte per io_timeout would otherwise hold the thread for ever.
    read_deadline: float | None = None
    hold_head = False
    _held: bytes | None = None

    def setblocking(self, flag: bool) -> None:
        if flag and self.io_timeout is not None:
            self.settimeout(self.io_timeout)
        else:
            super().setblocking(flag)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self._bound_by_deadline()
        try:
            return super().recv(buflen, flags)
        except TimeoutError:
            raise self._stalled("read") from None

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        self._bound_by_deadline()
        try:
            return super().recv_into(buffer, nbytes, flags)
        except TimeoutError:
            raise self._stalled("read") from None

    def _bound_by_deadline(self) -> None:
        """In blocking mode, never wait past the request's deadline (only ever tighter)."""
        deadline = self.read_deadline
        if deadline is None:
            return
        current = self.gettimeout()
        if current == 0.0:
            return  # non-blocking (the event loop reads this way)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(errno.ECONNRESET, "request body not complete in time")
        if current is None or left < current:
            self.settimeout(left)

    def send(self, data: Any, flags: int = 0) -> int:
        if self._held is not None:
            self.release_held()
        try:
            return super().send(data, flags)
        except TimeoutError:
            raise self._stalled("write") from None

    def sendall(self, data: Any, flags: int = 0) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= MAX_JOINED_BODY:
                data = held + data
            else:
                self._sendall(held, flags)
        elif self.hold_head:
            self.hold_head = False  # the first write of the response only
            if may_wait_for_body(data):
                self._held = data
                return
        self._sendall(data, flags)

    def release_held(self) -> None:
        """Send the held head, if any (the worker calls it when the response is done)."""
        held, self._held = self._held, None
        if held is not None:
            self._sendall(held, 0)

    def shutdown(self, how: int) -> None:
        if self._held is not None:
            with contextlib.suppress(OSError):
                self.release_held()
        super().shutdown(how)

    def _sendall(self, data: Any, flags: int) -> None:
        """SSLSocket.sendall, with one ``write`` for bytes instead of its loop.

        ssl.py's sendall casts a memoryview and calls ``send`` per slice
        (~2 us of Python per response); OpenSSL's write, blocking or under
        a timeout, returns only once it wrote everything (no partial-write
        mode is set), so for bytes one call does it. A short write (should
        it happen) sends the rest the general way.
        """
        try:
            sslobj: Any = self._sslobj  # type: ignore[attr-defined]  # ssl.py's own
            if sslobj is not None and flags == 0 and type(data) is bytes and data:
                sent = sslobj.write(data)
                if sent >= len(data):
                    return
                data = memoryview(data)[sent:]
            super().sendall(data, flags)
        except TimeoutError:
            raise self._stalled("write") from None

    def _stalled(self, op: str) -> TimeoutError:
        return TimeoutError(
            errno.ECONNRESET, f"peer stalled: no {op} progress within {self.gettimeout()}s"
        )


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
        self.proxy_reader: ProxyHeaderReader | None = None
        self.head = RequestBuffer()
        self.registered = False
        self.tls_environ: dict[str, str] = {}
        self.peer: PeerIdentity | None = None
        self.cert: Any = None
        # The client certificate's serial and notAfter, read once (mtls.worker._identify).
        self.cert_serial = 0
        self.cert_not_after = datetime.datetime.min.replace(tzinfo=datetime.UTC)
        self.close_after_response = False
        # The serial of the certificate this connection's handshake presented
        # (None: a context swapped during it); mtls.worker closes it once that changes.
        self.server_serial: int | None = None
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


def format_addr(sock: socket.socket, client: Any) -> str:
    if isinstance(client, tuple) and len(client) >= 2:
        host, port = client[0], client[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return str(sock.getpeername())
    except OSError:
        return "?"
